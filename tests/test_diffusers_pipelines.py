"""Diffusers editing pipelines as method families (``baselines.diffusers_pipelines``): tiny random components
built from configs and saved as folders, loaded by folder name through ``ip2p sweep``, ``ip2p regress`` and
``ip2p profile``; the seeding rule (a request's output depends only on its own seed); batching; refusals."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from baselines.diffusers_pipelines import FAMILIES, denoiser, load_pipeline_editor
from ip2p.errors import DataRowError, ModelLoadError, SpecError
from ip2p.protocol import EditRequest
from tests.pipeline_fixtures import BUILDERS, save_tiny, small_qwen_conditioning

TESTED = sorted(BUILDERS)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each family's tiny pipeline, built and saved once (lazily) for the module."""
    root, made = tmp_path_factory.mktemp("pipelines"), {}

    def get(family: str):
        if family not in made:
            made[family] = save_tiny(family, root / family)
        return made[family]

    return get


@pytest.fixture(autouse=True)
def _small_qwen(monkeypatch):
    small_qwen_conditioning(monkeypatch)


def _img(seed: int, h: int = 32, w: int = 32) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def _req(family, seed, instruction="make it blue", image_seed=0, item_id="", **caps):
    caps = {"input_caption": "a red square", "output_caption": "a blue square", **caps}
    steps = {k: 2 for k in ("num_inference_steps", "num_inversion_steps") if k in FAMILIES[family].knobs}
    return EditRequest(image=_img(image_seed), instruction=instruction, seed=seed, item_id=item_id,
                       knobs={**steps, "resize": None}, **caps)


class _Calls:
    """Counts the denoiser's forward calls (the pipeline's own module)."""

    def __init__(self, pipe):
        self.n = 0
        self.h = denoiser(pipe).register_forward_hook(lambda *_: setattr(self, "n", self.n + 1))


@pytest.mark.parametrize("family", TESTED)
def test_seeding_rule_and_batching(folders, family):
    ed = load_pipeline_editor(str(folders(family)), device="cpu", max_batch=4)
    assert ed.name == family and type(ed.pipe).__name__ in FAMILIES[family].classes  # chosen by model_index.json
    reqs = [_req(family, 1), _req(family, 2, "add a dog on the red square", image_seed=1), _req(family, 1)]
    calls = _Calls(ed.pipe)
    batched = ed.run(reqs)
    n_batched, calls.n = calls.n, 0
    singles = [ed.run([r])[0] for r in reqs]
    n_single = calls.n // 3
    assert all(x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1 for x in batched)
    # a request's output depends only on its own seed: batched == alone (up to batched-GEMM rounding)
    assert max((a - b).abs().max().item() for a, b in zip(batched, singles)) < 1e-4
    assert (batched[0] - batched[2]).abs().max().item() < 1e-5  # same request, same seed, same image
    assert (ed.run([_req(family, 3)])[0] - batched[0]).abs().max().item() > 1e-2  # another seed, another image
    # batching: one pipeline call for the batch where the family allows it, else one per request
    assert n_batched == (n_single if FAMILIES[family].batchable else 3 * n_single), (n_batched, n_single)
    calls.h.remove()


def _spec(tmp_path, folder, family, name="pipes"):
    spec = {"name": name, "dataset": {"kind": "world", "split": "test", "limit": 2},
            "methods": [{"name": "diffusers", "model": str(folder),
                         "knobs": {k: 2 for k in ("num_inference_steps", "num_inversion_steps")
                                   if k in FAMILIES[family].knobs} | {"resize": None},
                         "options": {"max_batch": 2}}],
            "metrics": {"compute": ["pixel", "target"]}, "seeds": [0, 1], "batch_size": 4, "device": "cpu"}
    path = tmp_path / f"{family}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _cli(*args):
    from ip2p.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return res.exit_code, res.output


@pytest.mark.parametrize("family", TESTED)
def test_sweep_regress_profile_by_folder(tmp_path, folders, family):
    import pandas as pd

    from bench.store import load_results

    folder = folders(family)
    spec = _spec(tmp_path, folder, family)
    code, out = _cli("sweep", spec, "--out", tmp_path / "run", "--no-progress")
    assert code == 0, out
    rows = load_results(tmp_path / "run")
    assert len(rows) == 4 and rows["l1"].notna().all()
    ident = json.loads(rows["model_identity"].iloc[0])
    assert ident["pipeline"] in FAMILIES[family].classes and ident["dtype"] == "fp32" and ident["cpu_offload"] is False
    assert "attention_backend" in ident
    per_seed = rows.pivot(index="item_id", columns="seed", values="l1")
    assert (per_seed[0] != per_seed[1]).all()  # per-request seeds reach the pipeline
    golden = tmp_path / "golden.json"
    code, out = _cli("regress", "--suite", spec, "--golden", golden, "--update-golden", "--out", tmp_path / "g",
                     "--no-progress")
    assert code == 0 and golden.exists(), out
    code, out = _cli("regress", "--suite", spec, "--golden", golden, "--out", tmp_path / "again", "--no-progress")
    assert code == 0, out
    assert json.loads((tmp_path / "again" / "regress.json").read_text())["status"] == "pass"
    rec_path = tmp_path / "profile.json"
    # other editing pipelines' folders go to the pipeline profiler by themselves; InstructPix2Pix's asks for it
    by_pipe = ["--pipeline", "auto"] if family == "diffusers-ip2p" else []
    code, out = _cli("profile", "--model", folder, "--res", 32, "--steps", 2, "--batch", 2, "--dtype", "fp32",
                     "--device", "cpu", "--warmup", 0, "--repeats", 1, "--out", rec_path, *by_pipe)
    assert code == 0, out
    rec = json.loads(rec_path.read_text())
    den = rec["components"][rec["denoiser"]]
    assert rec["kind"] == "pipeline" and den["calls_per_edit"] >= 2 and den["median_ms"] > 0
    assert den["flops_per_call"] > 0 and any(k.startswith("text_encoder") for k in rec["components"])
    assert rec["components"]["vae_decode"]["calls_per_edit"] >= 1
    assert isinstance(pd.DataFrame(rec["components"]).T, pd.DataFrame)


def test_wrong_kind_of_folder_is_refused_naming_the_classes(folders):
    with pytest.raises(ModelLoadError, match="FluxKontextPipeline") as e:
        load_pipeline_editor(str(folders("diffusers-ip2p")), FAMILIES["flux-kontext"], device="cpu")
    assert "StableDiffusionInstructPix2PixPipeline" in str(e.value)
    with pytest.raises(SpecError, match="supported: .*QwenImageEditPipeline"):
        load_pipeline_editor(str(folders("diffusers-ip2p")), device="cpu", pipeline="StableDiffusionPipeline")


def test_missing_item_field_is_refused_before_any_work(folders):
    ed = load_pipeline_editor(str(folders("diffedit")), device="cpu")
    calls = _Calls(ed.pipe)
    with pytest.raises(DataRowError, match="item 'b': input_caption is empty; diffedit needs input_caption"):
        ed.run([_req("diffedit", 0, item_id="a"), _req("diffedit", 0, item_id="b", input_caption="")])
    assert calls.n == 0


def test_knobs_declared_typed_and_ranged(folders):
    ed = load_pipeline_editor(str(folders("flux-kontext")), device="cpu")
    assert ed.knobs["guidance_scale"] == 2.5 and ed.knobs["num_inference_steps"] == 28  # published settings
    from ip2p.protocol import KnobError

    with pytest.raises(KnobError, match="item 'x': knob num_inference_steps must be >= 1"):
        ed.run([EditRequest(image=_img(0), instruction="a", knobs={"num_inference_steps": 0}, item_id="x")])
    with pytest.raises(SpecError, match="has no knob 'image_guidance_scale'"):
        ed.run([EditRequest(image=_img(0), instruction="a", knobs={"image_guidance_scale": 1.5})])
