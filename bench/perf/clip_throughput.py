"""GPU benchmark (never in CI): CLIP image embeddings per second, the cost that dominates metric
computation in a sweep. ViT-L-14 with random weights (open_clip architecture, no download), fp16,
batch 256; goal on one H100: >= 2000 images/s.

    python -m bench.perf.clip_throughput --model ViT-L-14 --precision fp16 --batch 256 \
        --warmup 5 --iters 20 --out results/runs/perf/clip_throughput.json

Timed: ``ClipSimilarity.encode_images`` (paper preprocessing from ``--input-size`` pixels, encode,
L2-normalise) on a batch already on the device; ``--input-size`` equal to the model's size makes
the resize a no-op-sized interpolate. ``torch.cuda.synchronize`` brackets the timed loop. Without
CUDA and ``--device cuda`` (the default) it prints a skip line and exits 0. ``--model tiny
--device cpu --batch 4 --iters 1`` runs the same code path on a tiny model in seconds.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

GOAL_IMG_PER_S = 2000

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def build_random_clip(name: str, device: torch.device, precision: str):
    """A random-weight CLIP wrapped as ip2p.metrics LoadedClip (same encode path as real models)."""
    import open_clip
    from ip2p.metrics.clip_models import LoadedClip, to_low_precision

    torch.manual_seed(0)
    if name == "tiny":
        model = open_clip.CLIP(**TINY_CFG)
        open_clip.model.set_model_preprocess_cfg(
            model, {"size": 32, "mode": "RGB", "mean": open_clip.OPENAI_DATASET_MEAN,
                    "std": open_clip.OPENAI_DATASET_STD, "interpolation": "bicubic", "resize_mode": "squash", "fill_color": 0})
        tokenizer = open_clip.SimpleTokenizer(context_length=16)
    else:
        model = open_clip.create_model(name, pretrained=None, device="cpu")
        tokenizer = open_clip.get_tokenizer(name)
    model.eval()
    to_low_precision(model, device, precision)
    for p in model.parameters():
        p.requires_grad_(False)
    pp = dict(open_clip.get_model_preprocess_cfg(model))
    ident = {"backbone": name, "pretrained": "random", "weights_hash": "random-seed0", "source": name,
             "precision": precision, "arch": name, "tokenizer": "open_clip"}
    return LoadedClip(model=model, tokenizer=tokenizer, preprocess_cfg=pp, identity=ident)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-L-14", help="open_clip architecture, or 'tiny'")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"],
                    help="default: fp16 on CUDA, fp32 on CPU")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--input-size", type=int, default=None, help="input pixels (default: the model's size)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the image tower")
    ap.add_argument("--out", default="results/runs/perf/clip_throughput.json")
    return ap


def _time_encode_images(sim, images: torch.Tensor, warmup: int, iters: int, device: torch.device) -> tuple[torch.Tensor, float]:
    """``warmup`` untimed then ``iters`` timed calls of ``sim.encode_images(images)``, the device
    synchronised around the timed loop; (the last features, seconds of the timed loop)."""
    with torch.inference_mode():
        for _ in range(warmup):
            sim.encode_images(images)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            feats = sim.encode_images(images)
        _sync(device)
        elapsed = time.perf_counter() - t0
    return feats, elapsed


def _record(args, precision: str, size: int, model_image_size, elapsed: float, device: torch.device) -> dict:
    """The result file's record: the settings, the timing and the machine."""
    return {
        "benchmark": "clip_image_embeddings",
        "model": args.model,
        "weights": "random",
        "precision": precision,
        "batch": args.batch,
        "input_size": size,
        "model_image_size": list(model_image_size),
        "preprocess": "paper",
        "compile": args.compile,
        "warmup": args.warmup,
        "iters": args.iters,
        "seconds": elapsed,
        "ms_per_batch": 1000 * elapsed / args.iters,
        "img_per_s": args.batch * args.iters / elapsed,
        "goal_img_per_s": GOAL_IMG_PER_S,
        **_environment(device),
    }


def _environment(device: torch.device) -> dict:
    """The device and versions of the record (``ip2p.util.provenance``)."""
    from ip2p.util.provenance import device_info, package_versions, runtime_versions

    v = runtime_versions()
    return {"device": device_info(device)["name"],
            "versions": {"torch": v["torch"], "open_clip": package_versions()["open_clip_torch"],
                         "cuda": torch.version.cuda, "python": v["python"]}}


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("SKIP clip_throughput: no CUDA device (run on a GPU machine, or pass --device cpu)")
        return 0
    precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")

    from ip2p.metrics.clip_similarity import ClipSimilarity

    loaded = build_random_clip(args.model, device, precision)
    if args.compile:
        loaded.model.visual = torch.compile(loaded.model.visual)
    sim = ClipSimilarity.from_loaded(loaded, preprocess="paper", cache=False, batch_size=args.batch)
    size = args.input_size or loaded.image_size[0]
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 3, size, size, generator=g).to(device)

    feats, elapsed = _time_encode_images(sim, images, args.warmup, args.iters, device)
    assert feats.shape[0] == args.batch and torch.isfinite(feats).all()
    record = _record(args, precision, size, loaded.image_size, elapsed, device)
    print(f"{args.model} {precision} batch {args.batch} on {record['device']}: {record['img_per_s']:.1f} img/s "
          f"({record['ms_per_batch']:.2f} ms/batch; goal {GOAL_IMG_PER_S} on H100)")
    if args.out:
        from ip2p.util.io import atomic_write_json

        atomic_write_json(Path(args.out), record)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
