"""CPU benchmark suite on the small world (pytest-benchmark).

In CI (``--benchmark-disable`` in pyproject's addopts, and under xdist) every benchmark runs its
function once, as a plain test: each also asserts what it computed. To measure:

    pytest bench/perf/test_cpu_perf.py -n 0 --benchmark-enable --benchmark-json results/perf/cpu-bench.json
"""
import json

import pytest
import torch

from ip2p.editor import load_editor
from ip2p.fastpath import FastEditPath, GuidedUNet
from ip2p.sampling import NoiseSource, discrete_denoiser, sample_euler_ancestral

BATCH = 4


@pytest.fixture(scope="module")
def world_editor():
    return load_editor("world:ip2p", device="cpu", resize=None, max_batch=BATCH)


@pytest.fixture(scope="module")
def scenes():
    from ip2p.data.world.examples import world_examples

    ex = list(world_examples("test", BATCH))
    return torch.stack([e.input_image for e in ex]), [e.instruction for e in ex]


def test_editor_step(benchmark, world_editor, scenes):
    """One sampling step of a chunk of 4 edits through the one loop (``sample_euler_ancestral``):
    the prepared denoiser's 3x4-sample UNet call and guidance, then the Euler update."""
    ed = world_editor
    images, instructions = scenes
    fast = FastEditPath(ed)
    lat = ed.encode_images(list(images))
    text, null = ed.encode_text(instructions), ed.encode_text([""])
    s_i, seeds = [1.0, 1.2, 1.5, 2.0], [0, 1, 2, 3]
    plan = fast.plan(10, seeds, lat.shape[1:])
    first = torch.tensor(plan.sigmas[:2])  # the first step only
    guided = GuidedUNet(fast.unet, lat, text, null, 7.5, s_i, dtype=ed.dtype)
    denoise = discrete_denoiser(guided, fast.sigma_table, ed.prediction_type, ed.device, sigmas=first)

    @torch.no_grad()
    def step():
        noise = plan.noise()
        return sample_euler_ancestral(denoise, noise.randn(lat.shape[1:]) * first[0], first, noise)

    got = benchmark(step)

    def eager(x_in, t):  # the eager editor's own guided call and noise, through the same loop
        return ed.guided_eps(x_in, t, lat, text, null, torch.tensor([7.5] * 4), torch.tensor(s_i))

    with torch.no_grad():
        noise = NoiseSource.from_seeds(seeds)
        ref = sample_euler_ancestral(discrete_denoiser(eager, fast.sigma_table, ed.prediction_type),
                                     noise.randn(lat.shape[1:]) * first[0], first, noise)
    assert torch.equal(got, ref)  # the fast step is the editor's step


def test_editor_edit(benchmark, world_editor, scenes):
    """A whole chunk of 4 edits, 5 steps, through the fast path; equal to editor.edit."""
    ed = world_editor
    images, instructions = scenes
    knobs = dict(image_guidance_scale=[1.0, 1.2, 1.5, 2.0], guidance_scale=7.5, num_inference_steps=5,
                 seeds=[0, 1, 2, 3])
    fast = FastEditPath(ed)
    got = benchmark(lambda: fast.edit(images, instructions, **knobs))
    assert torch.equal(got, ed.edit(images, instructions, **knobs))


def test_vae_encode(benchmark, world_editor, scenes):
    ed = world_editor
    images, _ = scenes
    lat = benchmark(lambda: ed.encode_images(list(images)))
    assert lat.shape == (BATCH, 4, 16, 16)
    # the editor encodes one image per VAE call: a latent does not depend on its batch mates
    assert torch.equal(lat[2:3], ed.encode_images([images[2]]))


def test_vae_decode(benchmark, world_editor, scenes):
    ed = world_editor
    images, _ = scenes
    vae = ed.components.vae
    with torch.no_grad():
        z = vae.encode(2 * images - 1).latent_dist.mode() * vae.config.scaling_factor
    out = benchmark(lambda: ed.decode(z))
    assert out.shape == images.shape
    # the world VAE reconstructs its own scenes (its card: L1 0.01-0.03 for the round trip)
    assert (out - images).abs().mean().item() < 0.05


def test_clip_image_embeddings(benchmark, scenes):
    from ip2p.metrics import ClipSimilarity

    images, _ = scenes
    clip = ClipSimilarity("world:clip", None, device="cpu", cache=False)
    feats = benchmark(lambda: clip.encode_images(images))
    assert feats.shape[0] == BATCH
    assert torch.allclose(feats.norm(dim=-1), torch.ones(BATCH), atol=1e-5)
    assert torch.allclose(feats[1], clip.encode_images(images[1:2])[0], atol=1e-5)


def test_profiler(benchmark, tmp_path):
    """The profiler itself on the tiny model (one round): its record is complete and consistent."""
    from bench.profiler import COMPONENTS, ProfileSpec, profile_edit

    spec = ProfileSpec(model="tiny", steps=3, batch=2, repeats=1, warmup=0, device="cpu", reference=False)
    r = benchmark.pedantic(profile_edit, args=(spec,), rounds=1, iterations=1)
    assert list(r["components"]) == list(COMPONENTS)
    assert r["components"]["unet"]["n"] == 3
    assert r["flops"]["unet"]["flops"] > 0 and r["whole"]["n"] == 1


def test_editor_throughput_script(tmp_path):
    """bench/perf/editor_throughput.py keeps working (tiny, CPU); its figures are consistent."""
    from bench.perf import editor_throughput

    out = tmp_path / "t.json"
    r = editor_throughput.main(["--model", "tiny", "--res", "16", "--device", "cpu", "--dtype", "fp32", "--batch", "3",
                                "--steps", "2", "--pipe-edits", "1", "--editor-calls", "1", "--fast", "--channels-last",
                                "--single", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["ratio_editor_over_pipeline"] == pytest.approx(
        r["editor"]["edit_steps_per_s"] / r["pipeline"]["edit_steps_per_s"])
    assert r["editor"]["edit_steps_per_s"] == pytest.approx(3 * 2 / r["editor"]["s_per_call"])
    assert saved["editor_single"]["batch"] == 1 and saved["fast_path"]["channels_last"] is True
    assert saved["command"].startswith("python -m bench.perf.editor_throughput --model tiny")


def test_clip_throughput_script(tmp_path):
    from bench.perf import clip_throughput

    out = tmp_path / "c.json"
    assert clip_throughput.main(["--model", "tiny", "--device", "cpu", "--batch", "4", "--iters", "1", "--warmup", "1",
                                 "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["img_per_s"] == pytest.approx(4 * 1 / r["seconds"]) and r["precision"] == "fp32"


def test_gpu_run_script_smoke(tmp_path):
    """bench/perf/gpu_run.sh --smoke: the prepared GPU run's code path on `tiny`, on the CPU."""
    import gzip
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(root / "bench/perf/gpu_run.sh"), "--smoke"], env=env, cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["gpu_run.log", "profile_b1.json", "profile_b4.json", "summary.json", "throughput.json",
                     "trace_b1.json.gz"]
    assert len(names) <= 8  # the device tool brings back at most 8 files
    summary = json.loads((out / "summary.json").read_text())
    assert summary["smoke"] is True
    assert {k: v["status"] for k, v in summary["stages"].items()} == {
        "ceilings": "ok", "build": "ok", "pipeline": "ok", "prepare (compile, batch 1)": "ok", "profile_b1": "ok",
        "profile_b4": "ok", "throughput": "ok", "throughput_b8": "ok"}
    checks = summary["checks"]
    tp = json.loads((out / "throughput.json").read_text())
    assert checks["batched_over_pipeline"]["value"] == pytest.approx(
        tp["editor"]["edit_steps_per_s"] / tp["pipeline"]["edit_steps_per_s"])
    assert checks["batched_over_pipeline"]["ratio_at_batch_8"] == pytest.approx(
        tp["editor_larger_batch"]["edit_steps_per_s"] / tp["pipeline"]["edit_steps_per_s"])
    p1 = json.loads((out / "profile_b1.json").read_text())
    assert checks["single_edit_ms_per_step"]["value"] == pytest.approx(p1["whole"]["median_ms"] / 3)
    assert p1["command"].startswith("python -m bench.perf.gpu_run --out") and p1["spec"]["batch"] == 1
    assert p1["reference_editor_edit"]["fast_vs_editor_max_abs_diff"] < 1e-4
    assert json.loads(gzip.decompress((out / "trace_b1.json.gz").read_bytes()))["traceEvents"]
    assert "[gpu_run] checks" in (out / "gpu_run.log").read_text()
