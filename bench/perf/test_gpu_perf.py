"""GPU benchmark suite (pytest-benchmark): SD 1.5-sized random weights at 512x512, bf16.
Skipped without CUDA. Each benchmark also asserts what it computed; the speed figures are the
benchmark's output (``--benchmark-json``), never asserted.

    pytest bench/perf/test_gpu_perf.py -n 0 --benchmark-enable --benchmark-json results/perf/gpu-bench.json

The single prepared GPU run (profiler, throughput against diffusers' pipeline, the issue's checks)
is ``bench/perf/gpu_run.sh``; this suite is the same comparison in pytest-benchmark form.
"""
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (GPU benchmark; never in CI)"),
]

RES, STEPS, BATCH = 512, 10, 16


@pytest.fixture(scope="module")
def sd15():
    from bench.perf.editor_throughput import make_pipeline
    from ip2p.editor import InstructPix2PixEditor
    from ip2p.models import build_builtin

    c = build_builtin("sd15", seed=0, torch_dtype=torch.bfloat16)
    pipe = make_pipeline(c, torch.device("cuda"))
    editor = InstructPix2PixEditor(c, device="cuda", dtype=torch.bfloat16, max_batch=BATCH)
    return pipe, editor


@pytest.fixture(scope="module")
def requests():
    from bench.perf.editor_throughput import sweep_requests

    return sweep_requests(BATCH, RES)


def test_pipeline_one_edit(benchmark, sd15, requests):
    """diffusers' pipeline, one edit per call (the baseline: REFERENCE.md saw 43 ms/step on an H100)."""
    pipe, _ = sd15
    images, instructions, _ = requests

    def edit():
        return pipe(instructions[0], image=images[0][None], num_inference_steps=STEPS, guidance_scale=7.5,
                    image_guidance_scale=1.5, generator=torch.Generator().manual_seed(0), output_type="pt").images

    out = benchmark.pedantic(edit, rounds=3, iterations=1, warmup_rounds=1)
    assert out.shape == (1, 3, RES, RES) and torch.isfinite(out).all()


@pytest.fixture(scope="module")
def fast(sd15):
    """The editor's fast path (compile default + CUDA graphs + channels-last); made after the
    pipeline's benchmark (channels-last changes the shared UNet in place)."""
    from ip2p.fastpath import FastEditPath, FastPathSettings

    _, editor = sd15
    return FastEditPath(editor, FastPathSettings(compile="default", cuda_graphs=True, channels_last=True))


@pytest.mark.parametrize("batch", [1, BATCH])
def test_editor_fast_path(benchmark, fast, requests, batch):
    """The editor's fast path, ``batch`` edits per call (sI varies: a sweep chunk). Its images are
    valid and a repeated call with the same seeds reproduces them (replayed graphs, pre-drawn noise);
    the distance to the eager editor's images is a reported figure of ``ip2p profile``, not asserted
    here (random bf16 weights amplify rounding differences over the steps)."""
    images, instructions, s_i = requests
    knobs = dict(image_guidance_scale=s_i[:batch], guidance_scale=7.5, num_inference_steps=STEPS,
                 seeds=list(range(batch)))

    def edit():
        out = fast.edit(images[:batch], instructions[:batch], **knobs)
        torch.cuda.synchronize()
        return out

    out = benchmark.pedantic(edit, rounds=3, iterations=1, warmup_rounds=1)
    assert out.shape == (batch, 3, RES, RES) and torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    assert (edit() - out).abs().max().item() < 1e-3
