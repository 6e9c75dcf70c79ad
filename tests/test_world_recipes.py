"""World recipes: fixed seeds reproduce weights exactly, an interrupted recipe resumes bit for bit,
the `ip2p world` commands are registered, and the recipes sit above the generator."""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import torch

from ip2p.errors import SpecError
from ip2p.util.hashing import hash_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _weights(folder: Path) -> str:
    return hash_folder(folder, suffixes=(".safetensors",))


def test_vae_recipe_is_deterministic_and_resumes_bit_for_bit(tmp_path, threads):
    from ip2p.world.vae_recipe import train_vae

    kw = dict(steps=4, batch=4, checkpoint_every=2, eval_n=12, bf16=False)
    rec = train_vae(tmp_path / "a" / "vae", run_dir=tmp_path / "a" / "run", **kw)
    train_vae(tmp_path / "b" / "vae", run_dir=tmp_path / "b" / "run", **kw)
    assert _weights(tmp_path / "a" / "vae") == _weights(tmp_path / "b" / "vae")
    assert rec["scaling_factor"] > 0 and rec["posterior_std_after"] < rec["posterior_std_before"] / 100
    assert set(rec["roundtrip_test_targets"]["l1_by_category"]) and rec["config"]["steps"] == 4
    # interrupted after step 2: only checkpoint-2 survives; the same command finishes the run
    run_c = tmp_path / "c" / "run"
    run_c.mkdir(parents=True)
    shutil.copy2(tmp_path / "a" / "run" / "checkpoint-2.pt", run_c / "checkpoint-2.pt")
    train_vae(tmp_path / "c" / "vae", run_dir=run_c, **kw)
    assert _weights(tmp_path / "c" / "vae") == _weights(tmp_path / "a" / "vae")
    # another seed gives other weights
    train_vae(tmp_path / "d" / "vae", run_dir=tmp_path / "d" / "run", seed=5, **kw)
    assert _weights(tmp_path / "d" / "vae") != _weights(tmp_path / "a" / "vae")


def test_vae_recipe_with_another_latent_channel_count(tmp_path, threads):
    """``latent_channels`` makes another latent (the shipped one has 4): the saved VAE encodes to that
    many channels and its posterior is sharpened on all of them; the record and its command say so; a
    run folder of the 4-channel latent cannot be resumed into it."""
    from diffusers import AutoencoderKL

    from ip2p.world.vae_recipe import train_vae

    kw = dict(steps=2, batch=4, checkpoint_every=2, eval_n=12, bf16=False)
    rec = train_vae(tmp_path / "vae8", run_dir=tmp_path / "run8", latent_channels=8, **kw)
    vae = AutoencoderKL.from_pretrained(str(tmp_path / "vae8")).eval()
    with torch.no_grad():
        post = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist
    assert post.mean.shape == (1, 8, 16, 16) and float(post.std.max()) < 0.05  # about e^-5 of an untrained std of 1
    assert rec["config"]["vae_config"]["latent_channels"] == 8 and "--latent-channels 8" in rec["command"]
    four = train_vae(tmp_path / "vae4", run_dir=tmp_path / "run4", **kw)
    assert four["config"]["vae_config"]["latent_channels"] == 4 and "--latent-channels" not in four["command"]
    with pytest.raises(SpecError, match=r"(?s)run4: its checkpoint at step 2 is of another VAE .*latent_channels=8.*size mismatch"):
        train_vae(tmp_path / "vae8b", run_dir=tmp_path / "run4", latent_channels=8, **dict(kw, steps=3))


def test_sd_recipe_resumes_bit_for_bit(tmp_path, threads):
    from ip2p.world import SD_DIR
    from ip2p.world.sd_recipe import train_sd

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for part in ("vae", "tokenizer"):
            shutil.copytree(SD_DIR / part, tmp_path / name / part)
    kw = dict(steps=4, batch=4, n_images=16, checkpoint_every=2, bf16=False)
    rec = train_sd(tmp_path / "a", run_dir=tmp_path / "run-a", **kw)
    assert rec["config"]["steps"] == 4 and (tmp_path / "a" / "model_index.json").exists()
    run_b = tmp_path / "run-b"
    run_b.mkdir()
    for f in ("checkpoint-2.pt", "latents-16-0.pt"):
        shutil.copy2(tmp_path / "run-a" / f, run_b / f)
    train_sd(tmp_path / "b", run_dir=run_b, **kw)
    for part in ("unet", "text_encoder"):
        assert _weights(tmp_path / "a" / part) == _weights(tmp_path / "b" / part), part


def test_sd_recipe_time_limit_stops_and_the_same_command_continues(tmp_path, threads):
    from ip2p.world import SD_DIR
    from ip2p.world.sd_recipe import train_sd

    for part in ("vae", "tokenizer"):
        shutil.copytree(SD_DIR / part, tmp_path / "sd" / part)
    kw = dict(steps=3, batch=2, n_images=8, checkpoint_every=100, bf16=False)
    assert train_sd(tmp_path / "sd", run_dir=tmp_path / "run", time_limit_minutes=0.0, **kw) is None
    assert [p.name for p in (tmp_path / "run").glob("checkpoint-*.pt")] == ["checkpoint-1.pt"]
    assert not (tmp_path / "sd" / "unet").exists()
    assert train_sd(tmp_path / "sd", run_dir=tmp_path / "run", **kw)["config"]["steps"] == 3


def test_world_commands_registered():
    from typer.testing import CliRunner

    from ip2p.cli import app

    out = CliRunner().invoke(app, ["world", "--help"])
    assert out.exit_code == 0, out.output
    for cmd in ("build-tokenizer", "train-vae", "train-sd", "train-ip2p", "evaluate-ip2p", "train-clip", "cards",
                "report"):
        assert cmd in out.output
    bad = CliRunner().invoke(app, ["world", "train-clip", "--which", "huge"])
    assert bad.exit_code != 0 and "metric" in (bad.output + str(bad.exception))


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_world_imports_its_recipes_and_the_generator_imports_no_models():
    """Recipes (ip2p.world.*) are imported by no package module outside ip2p/world/; the generator
    (ip2p.data.world) imports nothing of ip2p.world; the loading layer imports no world code."""
    offenders = []
    for path in [p for pkg in ("ip2p", "baselines", "bench") for p in (ROOT / pkg).rglob("*.py")]:
        rel = path.relative_to(ROOT)
        if rel.parts[:2] == ("ip2p", "world"):
            continue
        bad = {m for m in _imports(path) if m == "ip2p.world" and rel.parts[:2] != ("ip2p", "world")
               or m.startswith("ip2p.world.")}
        if bad:
            offenders.append(f"{rel}: {sorted(bad)}")
    assert not offenders, offenders
    for path in (ROOT / "ip2p" / "data" / "world").glob("*.py"):
        assert not {m for m in _imports(path) if m.startswith("ip2p.world")}, path
    assert not {m for m in _imports(ROOT / "ip2p" / "models.py") if "world" in m}


def test_ip2p_recipe_runs_its_stages_each_from_the_last_export_and_skips_finished_ones(tmp_path, monkeypatch, threads):
    """`ip2p world train-ip2p` trains every stage (stage k from stage k-1's exported folder, a stopped
    stage reproduced by stop_at_step), continues after a time limit, and a rerun trains nothing."""
    from safetensors.torch import load_file

    from ip2p.train.tiny import make_tiny_sd
    from ip2p.world import ip2p_recipe

    base = make_tiny_sd(tmp_path / "sd", seed=0)
    for k, v in dict(base=str(base), batch_size=2, resolution=32, data_options={"n": 16}, val_examples=0,
                     checkpoint_every=1, report_to="none", progress=False, mixed_precision="no").items():
        monkeypatch.setitem(ip2p_recipe.RECIPE, k, v)
    stages = (dict(max_steps=2), dict(max_steps=3, stop_at_step=2))
    run_dir = tmp_path / "run"
    assert ip2p_recipe.train_ip2p(run_dir, time_limit_minutes=0.0, ship=False, stages=stages) is None  # stops in stage 1
    # the stopped stage's folder holds a run of its settings: a stage 1 of other data is refused, not resumed from it
    with pytest.raises(SpecError, match=r"stage-1 holds a run of other settings .*data_options: it ran \{'n': 16\}"):
        ip2p_recipe.train_ip2p(run_dir, ship=False, stages=(dict(stages[0], data_options={"n": 8}), stages[1]))
    run = ip2p_recipe.train_ip2p(run_dir, ship=False, stages=stages)
    s1, s2 = run_dir / "stage-1", run_dir / "stage-2"
    assert run["final_step"] == 2 and run["config"]["base"] == str(s1) and run["config"]["stop_at_step"] == 2
    assert [r["final_step"] for r in run["previous_stages"]] == [2]
    assert "--stop-at-step 2" in run["command"] and "--steps 3" in run["command"]
    assert "--stop-at-step" not in run["previous_stages"][0]["command"]
    assert load_file(str(s2 / "unet" / "diffusion_pytorch_model.safetensors"))["conv_in.weight"].shape[1] == 8
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.safetensors")}
    again = ip2p_recipe.train_ip2p(run_dir, ship=False, stages=stages)
    assert again["previous_stages"] == run["previous_stages"] and again["final_step"] == 2
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.safetensors")} == before  # nothing retrained
    # a finished stage whose recipe changed since: an error naming the folder and the field, neither
    # skipped as done (its weights are not the new stage's) nor trained over (nothing lost)
    with pytest.raises(SpecError, match=r"stage-2 holds a run of other settings .*lr: it ran 0.0005, the recipe asks 0.001"):
        ip2p_recipe.train_ip2p(run_dir, ship=False, stages=(stages[0], dict(stages[1], lr=1e-3)))
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.safetensors")} == before


def test_ip2p_recipe_continues_from_the_shipped_weights_without_the_earlier_stages_folders(tmp_path, monkeypatch,
                                                                                           threads):
    """On a machine with none of the run folders (a fresh checkout), a chain one stage longer than the
    shipped world:ip2p trains only the new stage, from the shipped weights (bit for bit), and keeps the
    shipped stages' records; a chain the shipped record does not match is trained from the start."""
    import json

    from safetensors.torch import load_file

    from ip2p.train.tiny import make_tiny_sd
    from ip2p.world import ip2p_recipe

    base = make_tiny_sd(tmp_path / "sd", seed=0)
    for k, v in dict(base=str(base), batch_size=2, resolution=32, data_options={"n": 16}, val_examples=0,
                     checkpoint_every=1, report_to="none", progress=False, mixed_precision="no").items():
        monkeypatch.setitem(ip2p_recipe.RECIPE, k, v)
    stages = (dict(max_steps=2), dict(max_steps=3, stop_at_step=2))
    first = ip2p_recipe.train_ip2p(tmp_path / "old-run", ship=False, stages=stages)
    ship = ip2p_recipe.ship_run(tmp_path / "old-run" / "stage-2", tmp_path / "shipped")
    unet = "unet/diffusion_pytorch_model.safetensors"
    longer = (*stages, dict(max_steps=2))
    assert len(ip2p_recipe.shipped_chain(ship, longer)) == 2
    assert ip2p_recipe.shipped_chain(ship, (dict(max_steps=3), *stages[1:])) == []  # stage 1 ran another schedule
    assert ip2p_recipe.shipped_chain(ship, (stages[0], dict(stages[1], lr=1e-3))) == []  # another learning rate
    assert ip2p_recipe.shipped_chain(ship, (stages[0], dict(stages[1], data_options={"n": 8}))) == []  # other data

    run_dir = tmp_path / "fresh"
    run = ip2p_recipe.train_ip2p(run_dir, ship=False, stages=longer, ship_dir=ship)
    assert not (run_dir / "stage-1").exists()  # the shipped export of stage 2 stands on it
    assert (run_dir / "stage-2" / unet).read_bytes() == (ship / unet).read_bytes()
    assert [r["final_step"] for r in run["previous_stages"]] == [2, 2] and run["final_step"] == 2
    assert run["previous_stages"][0] == first["previous_stages"][0]
    assert run["config"]["base"] == str(run_dir / "stage-2")
    new, old = load_file(str(run_dir / "stage-3" / unet)), load_file(str(ship / unet))
    assert any(not torch.equal(new[k], old[k]) for k in old)  # stage 3 trained on
    assert json.loads((ship / "training_config.json").read_text())["final_step"] == 2  # the shipped folder untouched


def test_vae_recipe_runs_its_phases_each_from_the_last_checkpoint(tmp_path, threads):
    """`ip2p world train-vae` runs the phases in turn (phase k from phase k-1's last checkpoint), keeps
    the earlier phases' records beside the last, and a rerun changes nothing."""
    import json

    from ip2p.world.vae_recipe import train_vae_phases

    phases = (dict(steps=2, lr=1e-3, seed=0), dict(steps=2, lr=5e-4, seed=1))
    kw = dict(batch=4, checkpoint_every=2, eval_n=12, bf16=False)
    rec = train_vae_phases(tmp_path / "vae", run_dir=tmp_path / "run", phases=phases, **kw)
    assert rec["config"]["init_checkpoint"] == str(tmp_path / "run" / "phase-1" / "checkpoint-2.pt")
    first = json.loads((tmp_path / "vae" / "training-phase1.json").read_text())
    assert first["config"]["seed"] == 0 and "init_checkpoint" not in first["config"]
    assert _weights(tmp_path / "vae") != _weights(tmp_path / "run" / "phase-1" / "vae")  # phase 2 trained on
    before = _weights(tmp_path / "vae")
    train_vae_phases(tmp_path / "vae", run_dir=tmp_path / "run", phases=phases, **kw)
    assert _weights(tmp_path / "vae") == before


def test_recipes_refuse_a_device_they_cannot_train_on_before_any_work(tmp_path):
    """`--device cuda` without that GPU is a clear error before anything is written (no silent CPU run);
    the CPU and a visible GPU pass; a GPU stage's command drops --cpu."""
    from ip2p.train.config import TrainConfig
    from ip2p.world import ip2p_recipe
    from ip2p.world.recipe import check_device
    from ip2p.world.sd_recipe import train_sd

    missing = f"cuda:{torch.cuda.device_count()}"  # one index past the visible GPUs, on any machine
    assert check_device("cpu") == "cpu"
    for bad, words in ((missing, "no such CUDA device"), ("mps", "'cpu' or 'cuda'")):
        with pytest.raises(ValueError, match=words):
            check_device(bad)
    with pytest.raises(ValueError, match="no such CUDA device"):
        train_sd(tmp_path / "sd", run_dir=tmp_path / "sd-run", steps=1, device=missing)
    with pytest.raises(ValueError, match="no such CUDA device"):
        ip2p_recipe.train_ip2p(tmp_path / "ip2p-run", ship=False, device=missing)
    assert not (tmp_path / "sd-run").exists() and not (tmp_path / "ip2p-run").exists()
    gpu = TrainConfig(out=str(tmp_path / "o"), **dict(ip2p_recipe.RECIPE, cpu=False))
    assert "--cpu" not in ip2p_recipe.recipe_command(gpu).split()
    assert "--cpu" in ip2p_recipe.recipe_command(TrainConfig(out=str(tmp_path / "o"), **ip2p_recipe.RECIPE)).split()


def test_ip2p_recipe_trains_its_world_sd_base_first_when_the_shipped_world_sd_is_another_run(tmp_path, monkeypatch,
                                                                                              threads):
    """Stage 1 starts from world:sd only while the shipped world:sd is the recipe's base (BASE_SD); a
    longer world:sd shipped later makes the recipe train that base into <run>/sd-base first (once), so
    the chain still reproduces the shipped world:ip2p."""
    import json

    from ip2p.world import SD_DIR, ip2p_recipe

    rec = json.loads((SD_DIR / "unet" / "training.json").read_text())
    for steps, matches in ((ip2p_recipe.BASE_SD["steps"], True), (ip2p_recipe.BASE_SD["steps"] + 1, False)):
        (tmp_path / f"sd-{steps}" / "unet").mkdir(parents=True)
        (tmp_path / f"sd-{steps}" / "unet" / "training.json").write_text(
            json.dumps(dict(rec, config=dict(rec["config"], steps=steps))))
        assert ip2p_recipe.base_sd_matches(tmp_path / f"sd-{steps}") is matches
    assert not ip2p_recipe.base_sd_matches(tmp_path)  # no record: not the base
    other = tmp_path / "sd-other"
    for part in ("vae", "tokenizer"):
        shutil.copytree(SD_DIR / part, other / part)
    (other / "unet").mkdir()
    (other / "unet" / "training.json").write_text(json.dumps(dict(rec, config=dict(rec["config"], steps=3200))))
    base_sd = dict(steps=2, batch=2, n_images=8, bf16=False, checkpoint_every=100)
    assert not ip2p_recipe.base_sd_matches(other, base_sd)
    for k, v in dict(batch_size=2, resolution=64, data_options={"n": 8}, val_examples=0, checkpoint_every=1,
                     report_to="none", progress=False, mixed_precision="no").items():
        monkeypatch.setitem(ip2p_recipe.RECIPE, k, v)
    stages = (dict(max_steps=1), dict(max_steps=1))
    run_dir = tmp_path / "run"
    run = ip2p_recipe.train_ip2p(run_dir, ship=False, stages=stages, sd_dir=other, base_sd=base_sd)
    sd_base = run_dir / "sd-base"
    assert json.loads((sd_base / "unet" / "training.json").read_text())["config"]["steps"] == 2
    assert run["previous_stages"][0]["config"]["base"] == str(sd_base)
    assert f"--base {sd_base}" in run["previous_stages"][0]["command"]
    assert run["config"]["base"] == str(run_dir / "stage-1")
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.safetensors")}
    again = ip2p_recipe.train_ip2p(run_dir, ship=False, stages=stages, sd_dir=other, base_sd=base_sd)
    assert again["previous_stages"] == run["previous_stages"]
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.safetensors")} == before  # nothing retrained
    # a finished stage whose recipe changed since: an error naming the folder and the field, neither
    # skipped as done (its weights are not the new stage's) nor trained over (nothing lost)
    with pytest.raises(SpecError, match=r"stage-2 holds a run of other settings .*lr: it ran 0.0005, the recipe asks 0.001"):
        ip2p_recipe.train_ip2p(run_dir, ship=False, stages=(stages[0], dict(stages[1], lr=1e-3)))
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.safetensors")} == before
