"""bench.profiler / `ip2p profile`: per-component latency of an edit on the small models (CPU).

The timing figures themselves are the profiler's output, not asserted here, except the one
property that makes them meaningful: the components add up to the whole edit (within 10%)."""
import gzip
import json

import pytest
import torch
from typer.testing import CliRunner

from bench.hardware import PEAK_TFLOPS, peak_entry, peak_precision
from bench.profiler import COMPONENTS, PER_STEP, ProfileSpec, format_summary, profile_edit
from ip2p.cli import app
from ip2p.errors import SpecError
from ip2p.flops import unet_forward_flops


@pytest.fixture(scope="module")
def tiny_record():
    # enough steps and rounds that the medians are stable on a busy 2-core machine
    spec = ProfileSpec(model="tiny", steps=8, batch=2, repeats=9, warmup=1, device="cpu", peak_tflops=0.5)
    return profile_edit(spec)


def test_components_add_up_to_the_whole_edit(tiny_record):
    r = tiny_record
    assert 0.9 <= r["sum_over_whole"] <= 1.1, (r["sum_of_parts_ms"], r["whole"])
    # and no component is empty: each was timed the expected number of times
    for name in COMPONENTS:
        c = r["components"][name]
        assert c["n"] == 9 * (8 if name in PER_STEP else 1), name
        assert 0 < c["p10_ms"] <= c["median_ms"] <= c["p90_ms"], name
    assert r["components"]["unet"]["share_of_sum"] > r["components"]["guidance"]["share_of_sum"]


def test_record_carries_flops_roofline_memory_and_provenance(tiny_record):
    r = tiny_record
    from ip2p.models import load_components

    unet = load_components("tiny").unet
    want = unet_forward_flops(unet, 6, (8, 8)).total  # batch 2 -> 3x2 UNet samples, 16 px -> 8x8 latents
    assert r["flops"]["unet"]["flops"] == want
    assert r["unet_gflop_per_sample"] == pytest.approx(want / 6 / 1e9)
    med = r["components"]["unet"]["median_ms"]
    assert r["achieved_tflops_unet"] == pytest.approx(want / (med * 1e-3) / 1e12)
    assert r["roofline_share_unet"] == pytest.approx(r["achieved_tflops_unet"] / 0.5)
    assert r["peak_source"].startswith("--peak-tflops")
    for name in ("vae_encode", "vae_decode", "text_encode"):
        assert r["flops"][name]["flops"] > 0, r["flops"][name]
    assert r["memory"]["peak_bytes"] > 10 * 2**20 and "ru_maxrss" in r["memory"]["method"]
    assert r["device"]["type"] == "cpu" and r["timer"] == "time.perf_counter"
    assert r["versions"]["torch"] == torch.__version__ and "diffusers" in r["versions"]
    assert r["spec"]["res"] == 16 and r["spec"]["batch"] == 2
    # the fast path (no channels-last) is the eager editor's computation exactly
    assert r["reference_editor_edit"]["fast_vs_editor_max_abs_diff"] == 0.0
    assert r["edit_steps_per_s"] == pytest.approx(2 * 8 / (r["whole"]["median_ms"] * 1e-3))
    assert "whole edit" in format_summary(r)


def test_cli_writes_json_and_trace(tmp_path):
    out, trace = tmp_path / "p.json", tmp_path / "t.json.gz"
    res = CliRunner().invoke(app, ["profile", "--model", "tiny", "--steps", "2", "--batch", "1", "--repeats", "1",
                                   "--warmup", "0", "--device", "cpu", "--channels-last", "--no-reference",
                                   "--no-progress", "--trace", str(trace), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "whole edit" in res.output
    r = json.loads(out.read_text())
    assert r["command"].startswith("ip2p profile --model tiny") and "--channels-last" in r["command"]
    assert r["fast_path"]["channels_last"] is True and r["fast_path"]["sdpa_layers"] > 0
    assert "reference_editor_edit" not in r
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    names = {e.get("name") for e in events}
    assert set(COMPONENTS) <= names  # components labelled in the trace
    assert r["trace"]["path"] == str(trace)


@pytest.mark.parametrize("args,message", [
    (["--cuda-graphs"], "--cuda-graphs: needs a CUDA device"),
    (["--res", "18"], "--res 18: must be a multiple of 4"),
    (["--dtype", "fp8"], "--dtype 'fp8'"),
    (["--compile", "fast"], "--compile 'fast'"),
    (["--steps", "0"], "--steps 0: must be at least 1"),
])
def test_bad_options_are_one_line_errors(args, message, capsys):
    import sys

    from ip2p.cli import main

    argv = sys.argv
    sys.argv = ["ip2p", "profile", "--model", "tiny", "--device", "cpu", "--no-progress", *args]
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        sys.argv = argv
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("args,message", [
    (dict(cuda_graphs=True), "--cuda-graphs: needs a CUDA device"),
    (dict(res=18), "--res 18: must be a multiple of 4"),
    (dict(dtype="fp8"), "--dtype 'fp8'"),
    (dict(peak_tflops=0.0), "--peak-tflops 0.0"),
])
def test_spec_errors_name_the_option(args, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        profile_edit(ProfileSpec(model="tiny", device="cpu", steps=1, repeats=1, warmup=0, reference=False, **args))


def test_peak_table_lookup():
    assert peak_entry("NVIDIA H200") == "H200"
    assert peak_entry("NVIDIA H200 NVL") == "H200 NVL"
    assert peak_entry("NVIDIA H100 80GB HBM3") == "H100 SXM"
    assert peak_entry("NVIDIA H100 PCIe") == "H100 PCIe"
    assert peak_entry("NVIDIA A100-SXM4-80GB") == "A100"
    assert peak_entry("NVIDIA GeForce RTX 4090") is None
    assert PEAK_TFLOPS["H200"]["bf16"] == PEAK_TFLOPS["H100 SXM"]["bf16"] > PEAK_TFLOPS["A100"]["bf16"]
    assert peak_precision("bf16") == "bf16"
    assert peak_precision("fp32") in ("tf32", "fp32")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_profiled_path_is_the_editors_own_output_bit_for_bit(prediction_type):
    """The profiler times ``editor.edit`` itself through the editor's timing hook: its images are the
    editor's own, bit for bit, for an epsilon and a v-prediction model (the profiler once built its
    own sampler and ran v-prediction models as epsilon), and every region is timed as declared."""
    from diffusers import EulerAncestralDiscreteScheduler

    from bench.profiler import ProfiledEdit, make_requests
    from bench.timers import CpuTimer
    from ip2p.editor import InstructPix2PixEditor
    from ip2p.fastpath import FastPathSettings
    from tests.editor_fixtures import tiny_pipe

    pipe = tiny_pipe(seed=2)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config, prediction_type=prediction_type)
    ed = InstructPix2PixEditor.from_pipe(pipe, fast=FastPathSettings(), resize=None, max_batch=2)
    assert ed.prediction_type == prediction_type
    images, instructions, s_i, s_t, seeds = make_requests(2, 16, seed=7)
    timer = CpuTimer()
    with torch.no_grad():
        got = ProfiledEdit(ed, images, instructions, s_i, s_t, seeds, steps=4).run(timer)
    own = ed.edit(images, instructions, image_guidance_scale=s_i, guidance_scale=s_t, num_inference_steps=4,
                  seeds=seeds, resize=None)
    eager = InstructPix2PixEditor(ed.components, device="cpu", resize=None).edit(
        images, instructions, image_guidance_scale=s_i, guidance_scale=s_t, num_inference_steps=4, seeds=seeds)
    assert torch.equal(got, own) and torch.equal(got, eager)
    assert {n: len(timer.samples[n]) for n in COMPONENTS} == {n: 4 if n in PER_STEP else 1 for n in COMPONENTS}
    # the record's own check, through profile_edit with this editor
    spec = ProfileSpec(model="tiny", steps=3, batch=2, repeats=1, warmup=0, device="cpu", reference_repeats=1)
    r = profile_edit(spec, editor=ed)
    assert r["reference_editor_edit"]["fast_vs_editor_max_abs_diff"] == 0.0
    # and the sampler really depends on the prediction type: the other parameterisation differs
    other = tiny_pipe(seed=2)
    other.scheduler = EulerAncestralDiscreteScheduler.from_config(
        other.scheduler.config, prediction_type="epsilon" if prediction_type == "v_prediction" else "v_prediction")
    flipped = InstructPix2PixEditor.from_pipe(other, resize=None).edit(
        images, instructions, image_guidance_scale=s_i, guidance_scale=s_t, num_inference_steps=4, seeds=seeds)
    assert (flipped - got).abs().max().item() > 1e-2


def test_profile_refuses_an_editor_prepared_otherwise():
    from ip2p.editor import load_editor

    ed = load_editor("tiny", device="cpu", resize=None)  # no fast path
    with pytest.raises(SpecError, match="fast path"):
        profile_edit(ProfileSpec(model="tiny", steps=1, repeats=1, warmup=0, device="cpu"), editor=ed)
