"""DINO ViT metrics of editing benchmarks: DINO similarity (MagicBrush, Emu Edit) and PIE-Bench's
structure distance, with a loader that reads DINO by name from the local cache and never downloads.

Definitions (as the benchmarks' own scorers compute them):

- ``dino_similarity(reference, image)`` (MagicBrush ``evaluation/image_eval.py``, metric ``dino``;
  Emu Edit reports the same with the input image as reference): each image as an 8-bit RGB PIL
  image -> ``Resize(256, bicubic)`` (shorter side to 256, PIL resampling) -> ``CenterCrop(224)`` ->
  ``ToTensor`` -> ImageNet mean/std -> DINO ViT-S/16 -> the CLS token of the last layer after the
  final LayerNorm (what ``torch.hub`` DINO's ``forward`` returns, ``last_hidden_state[:, 0]`` of
  transformers' ``ViTModel``) -> cosine of the two CLS vectors. Higher is better (more similar).
- ``structure_distance(reference, image)`` (PIE-Bench, PnPInversion ``evaluation/
  matrics_calculator.py``): pixels as float **in [0, 255]** (the scorer never divides by 255) ->
  ``torchvision Resize(224, max_size=480)`` on the tensor (bilinear; antialias as this torchvision
  does by default, recorded in ``spec()``) -> ImageNet mean/std -> DINO ViT-B/8 -> the keys of the
  last block's attention (``layer=-1``; the scorer's ``layer_num=11`` of 12), all heads concatenated
  per token, CLS token included -> the token-by-token cosine self-similarity matrix
  ``S[i, j] = k_i . k_j / max(|k_i| |k_j|, 1e-8)`` -> ``mean((S_image - S_reference)^2)``.
  Lower is better (0 = same structure).

Backbones: ``load_dino("facebook/dino-vits16")`` (a Hub id, read with ``local_files_only``), a
local transformers folder, or ``"torchhub:facebookresearch/dino:main/dino_vits16"`` (the repo and
its checkpoint must already be in ``torch.hub.get_dir()``). A missing file raises ModelLoadError
naming it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ip2p.errors import ModelLoadError
from ip2p.metrics.checks import check_images, check_same_shape
from ip2p.util.hashing import hash_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# direction of each column these metrics produce (next to the definitions above)
DIRECTION = {"dino_image": "higher", "target_dino": "higher", "structure_distance": "lower"}

# the torch hub checkpoints of facebookresearch/dino (hubconf.py names -> file in hub/checkpoints)
_HUB_CHECKPOINTS = {
    "dino_vits16": "dino_deitsmall16_pretrain.pth", "dino_vits8": "dino_deitsmall8_pretrain.pth",
    "dino_vitb16": "dino_vitbase16_pretrain.pth", "dino_vitb8": "dino_vitbase8_pretrain.pth",
}


class DinoViT:
    """A loaded DINO ViT with the two readouts the metrics need.

    ``cls(x)``: CLS features ``[N, D]`` of normalised pixels ``x [N, 3, H, W]``;
    ``keys(x, layer)``: attention keys ``[N, T, D]`` (heads concatenated) of block ``layer``.
    """

    def __init__(self, model: torch.nn.Module, kind: str, source: str, device: torch.device):
        self.model = model.eval().to(device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.kind = kind  # "transformers" | "torchhub"
        self.source = source
        self.device = device
        self.weights_hash = hash_state_dict(self.model)

    def _blocks(self):
        if self.kind == "torchhub":
            return self.model.blocks
        # transformers >= 5 names them model.layers[i].attention.k_proj; 4.x model.encoder.layer[i].attention.attention.key
        return self.model.layers if hasattr(self.model, "layers") else self.model.encoder.layer

    @property
    def num_layers(self) -> int:
        return len(self._blocks())

    @torch.no_grad()
    def cls(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, torch.float32)
        if self.kind == "transformers":
            return self.model(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state[:, 0].float()
        return self.model(x).float()

    @torch.no_grad()
    def keys(self, x: torch.Tensor, layer: int = -1) -> torch.Tensor:
        x = x.to(self.device, torch.float32)
        idx = layer % self.num_layers
        captured: list[torch.Tensor] = []
        block = self._blocks()[idx]
        if self.kind == "transformers":
            att = block.attention
            module = att.k_proj if hasattr(att, "k_proj") else att.attention.key
            take: Callable[[torch.Tensor], torch.Tensor] = lambda out: out
        else:  # DINO's Attention: one qkv Linear, output [N, T, 3 * D] ordered (q, k, v)
            module = block.attn.qkv
            take = lambda out: out.reshape(out.shape[0], out.shape[1], 3, -1)[:, :, 1]
        handle = module.register_forward_hook(lambda m, inp, out: captured.append(take(out)))
        try:
            if self.kind == "transformers":
                self.model(pixel_values=x, interpolate_pos_encoding=True)
            else:
                self.model(x)
        finally:
            handle.remove()
        return captured[0].float()

    def identity(self) -> dict[str, Any]:
        return {"source": self.source, "loader": self.kind, "weights_hash": self.weights_hash,
                "layers": self.num_layers}


def _hub_cache_dir() -> Path:
    from huggingface_hub.constants import HF_HUB_CACHE

    return Path(HF_HUB_CACHE)


def load_dino(source: str = "facebook/dino-vits16", device: str | torch.device | None = None) -> DinoViT:
    """Load a DINO ViT by Hub id, folder, or ``torchhub:<repo>/<name>``, offline (see the module docstring)."""
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if source.startswith("torchhub:"):
        return _load_torchhub(source, device)
    from transformers import ViTModel

    path = Path(source).expanduser()
    if path.is_dir():
        for need in ("config.json",):
            if not (path / need).is_file():
                raise ModelLoadError(f"DINO folder {path}: {need} is missing (expected a transformers ViTModel folder "
                                     "written by save_pretrained)")
        if not any((path / w).is_file() for w in ("model.safetensors", "pytorch_model.bin")):
            raise ModelLoadError(f"DINO folder {path}: model.safetensors (or pytorch_model.bin) is missing")
    elif path.exists() or source.count("/") != 1 or source.startswith((".", "/", "~")):
        raise ModelLoadError(f"DINO source {source!r}: no such model folder (and not a Hub id such as facebook/dino-vits16)")
    try:
        model = ViTModel.from_pretrained(str(path) if path.is_dir() else source, local_files_only=True,
                                         add_pooling_layer=False)
    except OSError as e:
        repo = _hub_cache_dir() / ("models--" + source.replace("/", "--"))
        raise ModelLoadError(
            f"DINO {source!r} is not in the local Hugging Face cache: expected config.json and model.safetensors "
            f"(or pytorch_model.bin) under {repo}/snapshots/<revision>/ ({e.__class__.__name__}: {str(e).splitlines()[0]}). "
            "Copy the model there (huggingface-cli download on a machine with network), or pass a local folder. "
            "Nothing is downloaded.") from e
    return DinoViT(model, "transformers", source, device)


def _load_torchhub(source: str, device: torch.device) -> DinoViT:
    spec = source[len("torchhub:"):]
    repo, _, name = spec.rpartition("/")
    if not repo or not name:
        raise ModelLoadError(f"DINO source {source!r}: expected torchhub:<owner>/<repo>[:<ref>]/<model>, "
                             "e.g. torchhub:facebookresearch/dino:main/dino_vits16")
    owner_repo, _, ref = repo.partition(":")
    hub = Path(torch.hub.get_dir())
    repo_dir = hub / f"{owner_repo.replace('/', '_')}_{ref or 'main'}"
    if not (repo_dir / "hubconf.py").is_file():
        raise ModelLoadError(f"DINO {source!r}: {repo_dir / 'hubconf.py'} is missing (the torch hub copy of {owner_repo}); "
                             "nothing is downloaded. Copy the repo there, or set TORCH_HOME.")
    ckpt = _HUB_CHECKPOINTS.get(name)
    if ckpt and not (hub / "checkpoints" / ckpt).is_file():
        raise ModelLoadError(f"DINO {source!r}: checkpoint {hub / 'checkpoints' / ckpt} is missing; nothing is downloaded. "
                             "Place the file there, or set TORCH_HOME.")
    model = torch.hub.load(str(repo_dir), name, source="local")
    return DinoViT(model, "torchhub", source, device)


# ---- preprocessing -------------------------------------------------------------------------

def magicbrush_dino_preprocess(x: torch.Tensor, resize: int = 256, crop: int = 224) -> torch.Tensor:
    """The scorer's transform on each image of ``x [N, 3, H, W]`` in [0, 1]: 8-bit PIL -> Resize(resize,
    bicubic) -> CenterCrop(crop) -> ToTensor -> ImageNet mean/std; ``[N, 3, crop, crop]``."""
    from torchvision import transforms as T

    from ip2p.util.io import tensor_to_pil

    tf = T.Compose([T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(crop), T.ToTensor(),
                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return torch.stack([tf(tensor_to_pil(img)) for img in x.detach().cpu()])


def pie_structure_preprocess(x: torch.Tensor, size: int = 224, max_size: int = 480, pixel_scale: float = 255.0,
                             antialias: bool = True) -> torch.Tensor:
    """PIE-Bench's transform: ``x * pixel_scale`` -> Resize(size, max_size) on the tensor -> ImageNet mean/std."""
    from torchvision.transforms import functional as TF

    y = x.detach().float() * pixel_scale
    y = TF.resize(y, [size], interpolation=TF.InterpolationMode.BILINEAR, max_size=max_size, antialias=antialias)
    return TF.normalize(y, IMAGENET_MEAN, IMAGENET_STD)


# ---- the metrics ---------------------------------------------------------------------------

def dino_similarity(reference: torch.Tensor, image: torch.Tensor, dino: DinoViT, *, resize: int = 256,
                    crop: int = 224) -> torch.Tensor:
    """cos(CLS(reference), CLS(image)) per item, ``[N]`` float32 on the CPU (the images may differ in size)."""
    check_images(reference, "reference")
    check_images(image, "image", n=reference.shape[0])
    a = dino.cls(magicbrush_dino_preprocess(reference, resize, crop))
    b = dino.cls(magicbrush_dino_preprocess(image, resize, crop))
    return F.cosine_similarity(a, b, dim=-1).cpu()


def key_self_similarity(keys: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``S[n, i, j] = k_i . k_j / max(|k_i| |k_j|, eps)`` for keys ``[N, T, D]``."""
    norms = keys.norm(dim=-1, keepdim=True)
    return (keys @ keys.transpose(1, 2)) / (norms @ norms.transpose(1, 2)).clamp_min(eps)


def structure_distance(reference: torch.Tensor, image: torch.Tensor, dino: DinoViT, *, layer: int = -1,
                       size: int = 224, max_size: int = 480, pixel_scale: float = 255.0,
                       antialias: bool = True) -> torch.Tensor:
    """PIE-Bench's structure distance per item, ``[N]`` float32 on the CPU (definition above)."""
    check_images(reference, "reference")
    check_images(image, "image", n=reference.shape[0])
    check_same_shape(reference, image, "reference", "image")
    out = []
    for a, b in zip(reference, image):  # one at a time, as the scorer (token counts follow the size)
        sa = key_self_similarity(dino.keys(pie_structure_preprocess(a[None], size, max_size, pixel_scale, antialias), layer))
        sb = key_self_similarity(dino.keys(pie_structure_preprocess(b[None], size, max_size, pixel_scale, antialias), layer))
        out.append((sb - sa).square().mean())
    return torch.stack(out).float().cpu()
