"""Prompt-to-Prompt pair generation (ip2p.data.pairs, ip2p.data.attention) with the small world's
real text-to-image model (world:sd, 64x64, 16x16 latents) and a few steps."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ip2p.data.pairs import (
    PairSampler,
    draw_pair,
    generate_pairs,
    prompt_seeds,
    read_prompts,
    seeds_json,
)
from ip2p.errors import DataRowError
from ip2p.sampling import NoiseSource, get_sigmas, sample_euler_ancestral, sigma_to_t
from ip2p.util.io import load_image

ROOT = Path(__file__).resolve().parents[1]
A = "a picture of a large red circle at the top left, white background"
B = "a picture of a large blue circle at the top left, white background"
STEPS = 4


@pytest.fixture(scope="module")
def sampler():
    return PairSampler("world:sd", device="cpu")


def independent_generation(sampler: PairSampler, prompt: str, seed: int, cfg: float, steps: int) -> torch.Tensor:
    """One image of ``prompt`` alone, with the UNet's own attention processors, from the noise a
    pair with ``seed`` uses (initial noise, two setting draws, then one draw per step)."""
    unet = sampler.components.unet
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn((1, *sampler.latent_shape), generator=g)
    torch.rand((), generator=g), torch.rand((), generator=g)  # p and cfg, as the pair draws them
    sigmas = get_sigmas(sampler.sigma_table, steps)
    ctx = torch.cat([sampler.prompts([""]), sampler.prompts([prompt])])

    def denoise(x, sigma):
        t = sigma_to_t(torch.tensor([sigma]), sampler.sigma_table).expand(2)
        x_in = x / (sigma**2 + 1) ** 0.5
        eps_u, eps_c = unet(torch.cat([x_in, x_in]), t, encoder_hidden_states=ctx).sample.chunk(2)
        return x - sigma * (eps_u + cfg * (eps_c - eps_u))

    with torch.no_grad():
        z = sample_euler_ancestral(denoise, x0 * sigmas[0], sigmas, NoiseSource([g]))
        return sampler.decode(z)[0]


def test_p_zero_pair_equals_two_independent_generations(sampler):
    seed = 1234
    d = draw_pair(seed, sampler.latent_shape, (0.0, 0.0), (9.0, 9.0))
    assert d.p2p_threshold == 0.0 and d.cfg_scale == 9.0
    first, second = sampler.sample([A], [B], [d], STEPS)
    ref_a = independent_generation(sampler, A, seed, 9.0, STEPS)
    ref_b = independent_generation(sampler, B, seed, 9.0, STEPS)
    assert (first[0] - ref_a).abs().max() < 1e-4
    assert (second[0] - ref_b).abs().max() < 1e-4
    assert (ref_a - ref_b).abs().max() > 0.05  # the two prompts do give different images
    # with copying, the first image is untouched and the second one changes
    d = draw_pair(seed, sampler.latent_shape, (1.0, 1.0), (9.0, 9.0))
    first_p, second_p = sampler.sample([A], [B], [d], STEPS)
    assert (first_p[0] - ref_a).abs().max() < 1e-4
    assert (second_p[0] - ref_b).abs().max() > 1e-2


def _maps(sampler, p, seed=7):
    rec = {}
    d = draw_pair(seed, sampler.latent_shape, (p, p), (7.5, 7.5))
    images = sampler.sample([A], [B], [d], STEPS, recorder=rec)
    return rec, images


def test_p_one_copies_every_self_attention_map_of_every_step_but_the_official_last(sampler):
    rec, images = _maps(sampler, 1.0)
    layers = [n for n in rec]
    assert layers and all(n.endswith("attn1") for n in layers)
    assert len(layers) == sum(1 for n, _ in sampler.components.unet.attn_processors.items() if n.endswith("attn1.processor"))
    for name in layers:
        calls = rec[name]
        assert len(calls) == STEPS
        for i, m in enumerate(calls):  # rows: uncond first, uncond second, cond first, cond second
            assert m.shape[0] == 4
            same = torch.equal(m[1], m[0]) and torch.equal(m[3], m[2])
            # the official rule copies while p > i / (len(sigmas) - 2): at p = 1 not at the last step
            assert same == (i < STEPS - 1), (name, i)
    # the maps used are those of the production path (no recorder: scaled-dot-product attention)
    d = draw_pair(7, sampler.latent_shape, (1.0, 1.0), (7.5, 7.5))
    fast = sampler.sample([A], [B], [d], STEPS)
    assert (fast[1] - images[1]).abs().max() < 1e-4


def test_p_zero_leaves_maps_different_and_p_half_copies_the_first_half(sampler):
    # at step 0 both samples have the same latent, so a layer before any cross-attention has equal
    # maps whatever p; from then on the text makes them differ unless they are copied
    rec, _ = _maps(sampler, 0.0)
    for calls in rec.values():
        assert not any(torch.equal(m[3], m[2]) for m in calls[1:])
    rec, _ = _maps(sampler, 0.5)  # 0.5 > i / 3 for i = 0, 1
    for calls in rec.values():
        assert [torch.equal(m[3], m[2]) and torch.equal(m[1], m[0]) for m in calls] == [True, True, False, False]


def test_a_pair_does_not_depend_on_its_batch_mates(sampler):
    draws = lambda: [draw_pair(s, sampler.latent_shape, (0.1, 0.9), (7.5, 15)) for s in (11, 12, 13)]
    firsts, seconds = [A, B, A], [B, A, B]
    batched = sampler.sample(firsts, seconds, draws(), STEPS)
    for j, d in enumerate(draws()):
        one = sampler.sample([firsts[j]], [seconds[j]], [d], STEPS)
        assert (one[0][0] - batched[0][j]).abs().max() < 1e-4
        assert (one[1][0] - batched[1][j]).abs().max() < 1e-4


def _prompt_file(tmp_path, n=3, caption_key=False):
    lines = []
    for i, colour in enumerate(["red", "green", "blue", "yellow"][:n]):
        line = {"input": f"a picture of a large {colour} square at the top left, white background",
                "edit": "turn it purple", "output": "a picture of a large purple square at the top left, white background",
                "url": f"u{i}"}
        if caption_key:
            line = {"caption": line.pop("input"), **line}
        lines.append(json.dumps(line))
    p = tmp_path / "prompts.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def _run_cli(prompts, out, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "ip2p.cli", "data", "pairs", "--model", "world:sd", "--prompts", str(prompts),
           "--out", str(out), "--n", "2", "--steps", "2", "--batch-size", "2", "--device", "cpu", "--no-progress"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _rows(folder):
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def test_written_layout_is_the_official_one_and_reads_back(tmp_path, sampler):
    prompts = _prompt_file(tmp_path, n=2, caption_key=True)
    out = tmp_path / "pairs"
    summary = generate_pairs(None, prompts, out, n_per_prompt=2, steps=2, batch_size=3, sampler=sampler, progress=False)
    assert summary["pairs"] == 4
    lines = prompts.read_text().splitlines()
    for i in range(2):
        folder = out / f"{i:07d}"
        assert (folder / "prompt.json").read_text() == json.dumps(json.loads(lines[i]))  # the line as given
        rows = _rows(folder)
        assert [r["seed"] for r in rows] == prompt_seeds(0, i, 2)
        for r in rows:
            assert list(r) == ["seed", "p2p_threshold", "cfg_scale", "clip_sim_0", "clip_sim_1", "clip_sim_dir", "clip_sim_image"]
            assert 0.1 <= r["p2p_threshold"] <= 0.9 and 7.5 <= r["cfg_scale"] <= 15
            assert r["clip_sim_dir"] is None  # not computed yet: missing, not zero
            for k in (0, 1):
                jpg = folder / f"{r['seed']}_{k}.jpg"
                assert jpg.read_bytes()[:3] == b"\xff\xd8\xff" and load_image(jpg).shape == (3, 64, 64)
    seeds = json.loads((out / "seeds.json").read_text())
    assert seeds == sorted(seeds) and all(isinstance(s, str) for _, ss in seeds for s in ss)
    assert seeds == [[f"{i:07d}", sorted(map(str, prompt_seeds(0, i, 2)), key=lambda s: s + "_0.jpg")] for i in range(2)]

    from ip2p.data import open_dataset

    ds = open_dataset(f"official:{out}", "all")
    assert sorted(ex.item_id for ex in ds) == sorted(f"{d}/{s}" for d, ss in seeds for s in ss)
    ex = ds[0]
    assert ex.input_caption.startswith("a picture of a large") and ex.instruction == "turn it purple"
    assert "p2p_threshold" in ex.metadata and ex.load_target().shape == (3, 64, 64)


def test_official_seed_order_and_bad_prompt_lines(tmp_path):
    assert seeds_json([("0000001", [5, 123, 12]), ("0000000", ["7"])]) == '[["0000000", ["7"]], ["0000001", ["123", "12", "5"]]]'
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"input": "a", "edit": "b", "output": "c"}) + "\n" + json.dumps({"input": "a", "output": "c"}) + "\n")
    with pytest.raises(DataRowError, match=r"bad.jsonl:2: field 'edit': missing"):
        read_prompts(bad)
    assert [t.output for t in read_prompts("world:triplets", limit=3)] and len(read_prompts("world:triplets", limit=3)) == 3


@pytest.mark.parametrize("kill", ["images:3", "pair:3"])
def test_rerun_after_sigkill_has_no_duplicate_and_no_missing_pair(tmp_path, kill):
    prompts = _prompt_file(tmp_path, n=3)
    out = tmp_path / "pairs"
    r = _run_cli(prompts, out, {"IP2P_PAIRS_KILL_AFTER": kill})
    assert r.returncode == -9, r.stderr[-2000:]
    rows_before = sum(len(_rows(out / f"{i:07d}")) for i in range(3) if (out / f"{i:07d}" / "metadata.jsonl").exists())
    assert rows_before == (2 if kill.startswith("images") else 3)  # the 3rd pair's images exist without a row
    # a torn line and a duplicate row, as a second kill in the middle of an append could leave
    f0 = out / "0000000" / "metadata.jsonl"
    f0.write_text(f0.read_text() + f0.read_text().splitlines()[0] + "\n" + '{"seed": 12')
    r = _run_cli(prompts, out)
    assert r.returncode == 0, r.stderr[-2000:]
    ref = tmp_path / "ref"
    assert _run_cli(prompts, ref).returncode == 0
    for i in range(3):
        got, want = _rows(out / f"{i:07d}"), _rows(ref / f"{i:07d}")
        assert sorted(r["seed"] for r in got) == sorted(prompt_seeds(0, i, 2))  # no duplicate, none missing
        assert sorted(got, key=lambda r: r["seed"]) == sorted(want, key=lambda r: r["seed"])
        for r in got:
            for k in (0, 1):
                a = load_image(out / f"{i:07d}" / f"{r['seed']}_{k}.jpg")
                b = load_image(ref / f"{i:07d}" / f"{r['seed']}_{k}.jpg")
                assert (a - b).abs().mean() < 2 / 255
    assert json.loads((out / "seeds.json").read_text()) == json.loads((ref / "seeds.json").read_text())
    assert not list(out.rglob("*.tmp"))


def test_partitions_split_the_prompts_and_together_make_the_whole(tmp_path, sampler):
    prompts = _prompt_file(tmp_path, n=3)
    out = tmp_path / "pairs"
    a = generate_pairs(None, prompts, out, n_per_prompt=1, steps=1, sampler=sampler, progress=False,
                       partition=0, n_partitions=2)
    assert a["prompts"] == 2 and a["pairs_listed"] == 2  # np.array_split: prompts 0, 1 | 2
    assert not (out / "0000002").exists()
    b = generate_pairs(None, prompts, out, n_per_prompt=1, steps=1, sampler=sampler, progress=False,
                       partition=1, n_partitions=2)
    assert b["prompts"] == 1 and b["generated_now"] == 1 and b["pairs_listed"] == 3
    assert [d for d, _ in json.loads((out / "seeds.json").read_text())] == ["0000000", "0000001", "0000002"]
