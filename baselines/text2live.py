"""Text2Live-style editing (Bar-Tal et al. 2022), the paper's second baseline, behind the protocol.

Per image, an RGBA edit layer ``(rgb, alpha)`` is optimised and composited over the input ``I``::

    C = alpha * rgb + (1 - alpha) * I

toward the request's ``output_caption`` (T1) from its ``input_caption`` (T0), with a guide CLIP
``E`` (image features ``E_i``, text features ``E_t``, all L2-normalised) on ``n_aug`` seeded views::

    L_comp   = mean_v 1 - cos(E_i(v(C)), E_t(T1))                          composition
    L_dir    = mean_v 1 - cos(E_i(v(C)) - E_i(v(I)), E_t(T1) - E_t(T0))    direction
    L_struct = MSE(S(C), S(I))                                             structure
    L_sparse = mean(alpha) + mean(2 * sigmoid(5 * alpha) - 1)              opacity: L1 + L0-approx
    L = lambda_composition * L_comp + lambda_direction * L_dir
        + lambda_structure * L_struct + lambda_sparsity * L_sparse

as in Text2Live's ``util/losses.py`` (its composition term is ``L_comp + L_dir`` under one weight,
its sparsity ``6 * (0.01 * L1 + 0.01 * L0)``; here each has its own knob). Choices and why:

- The edit layer comes from a small generator network (a two-scale conv net on the input image and
  its pixel coordinates, :class:`EditLayerGenerator`), not from free per-pixel parameters: as in
  Text2Live, the network's smoothness prior keeps CLIP from being satisfied by adversarial
  high-frequency pixel patterns, and the edit stays aligned with the image's own edges. Its size
  does not grow with the image. Alpha starts near 0 (bias -3), so the first composite is the input.
- Structure term: ``S(x)`` is the cosine self-similarity of the guide ViT's keys in its last
  attention block over the patch tokens (CLS dropped), on the un-augmented full view; this is
  Text2Live's own structure loss (its ``calculate_self_sim`` on CLIP ViT keys), computed in the same
  forward pass as the CLIP losses. It needs a ViT guide whose blocks use ``nn.MultiheadAttention``
  (every open_clip ViT); anything else is refused with a ModelLoadError.
- Views: view 0 is the whole image; the others are square-ish random crops (side 0.6-1 of the image,
  Text2Live's cut-out range), each flipped with probability 0.5, all resized to the guide's input
  size (bicubic, the paper's CLIP preprocessing). The same crop is taken of ``C`` and ``I``, so the
  direction term compares like with like (Text2Live draws them independently). Colour jitter,
  perspective and the green-screen loss of Text2Live are left out.
- Seeds: request ``i`` with seed ``s`` initialises its generator network (on the CPU, then moved)
  from the CPU generator seeded with ``s`` (inside ``torch.random.fork_rng``, so the global RNG is
  untouched) and draws its views from its own ``torch.Generator().manual_seed(s)``. Requests are
  optimised one after the other, each with its own network, and captions are encoded one at a
  time, so a request's output never depends on its batch mates (DESIGN invariant 1). Adam,
  constant learning rate. Same seed, same output: bit for bit on the CPU (tested); on CUDA the
  backward of the bilinear/bicubic resizes accumulates with atomic adds, so repeated runs there
  may differ in the last bits (not measured here).

The guide CLIP must differ from the metric CLIP of the sweep (a method must not optimise the very
metric it is scored by): given ``metric_clip`` (the sweep passes its ``metrics.clip``), equal
weights are refused with a SpecError naming both, unless ``force_same_guide=True``; the editor's
``identity()`` (stored in every result row's ``model_identity``) then says
``"guide_equals_metric": true``. Guides: ``world:clip-guide`` in the small world; an open_clip
name with a tag for real images (Text2Live used ``ViT-B-32``/``openai``). CLIP is loaded only
through :func:`ip2p.metrics.load_clip`.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ip2p.core import process_input, resize_knob
from ip2p.errors import DataRowError, ModelLoadError, NonFiniteOutputError, SpecError
from ip2p.metrics.clip_models import LoadedClip, load_clip
from ip2p.metrics.preprocess import normalize
from ip2p.protocol import EditRequest, Knob, knob_defaults, resolve_knobs, who

GENERATOR_WIDTH = 16
ALPHA_INIT_BIAS = -3.0  # sigmoid(-3) = 0.047: the first composite is (almost) the input
CROP_SCALE = (0.6, 1.0)  # Text2Live's cut-out side range
L0_SHARPNESS = 5.0  # Text2Live's pseudo-L0: 2 * sigmoid(5 * alpha) - 1


# ---------------------------------------------------------------- the edit-layer generator

class EditLayerGenerator(nn.Module):
    """Input image ``[1, 3, H, W]`` in [0, 1] -> RGBA edit layer ``(rgb [1,3,H,W], alpha [1,1,H,W])``.

    Two scales: a full-resolution branch and a half-resolution branch (stride-2 conv, bilinear
    upsampling back), concatenated, then a 1x1 head. Inputs: the image and two coordinate channels
    in [-1, 1], so the layer can place content where the image itself has none."""

    def __init__(self, width: int = GENERATOR_WIDTH):
        super().__init__()
        act = lambda: nn.LeakyReLU(0.2)  # noqa: E731
        self.full = nn.Sequential(nn.Conv2d(5, width, 3, padding=1), act(), nn.Conv2d(width, width, 3, padding=1), act())
        self.coarse = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), act(),
                                  nn.Conv2d(2 * width, 2 * width, 3, padding=1), act())
        self.head = nn.Sequential(nn.Conv2d(3 * width, width, 3, padding=1), act(), nn.Conv2d(width, 4, 1))
        with torch.no_grad():
            self.head[-1].bias[3].fill_(ALPHA_INIT_BIAS)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = image.shape
        ys = torch.linspace(-1, 1, h, device=image.device, dtype=image.dtype)
        xs = torch.linspace(-1, 1, w, device=image.device, dtype=image.dtype)
        coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij")).expand(b, 2, h, w)
        f = self.full(torch.cat([image, coords], dim=1))
        g = F.interpolate(self.coarse(f), size=(h, w), mode="bilinear", align_corners=False)
        out = self.head(torch.cat([f, g], dim=1))
        return torch.sigmoid(out[:, :3]), torch.sigmoid(out[:, 3:4])


def composite(rgb: torch.Tensor, alpha: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """``alpha * rgb + (1 - alpha) * image`` (the edit layer over the input)."""
    return alpha * rgb + (1 - alpha) * image


def sparsity_loss(alpha: torch.Tensor) -> torch.Tensor:
    """Text2Live's opacity regulariser: L1 ``mean(alpha)`` plus the L0 approximation
    ``mean(2 * sigmoid(5 * alpha) - 1)`` (0 at alpha = 0, near 1 once alpha is clearly positive)."""
    return alpha.mean() + (2 * torch.sigmoid(L0_SHARPNESS * alpha) - 1).mean()


def self_similarity(keys: torch.Tensor) -> torch.Tensor:
    """Cosine self-similarity ``[B, L, L]`` of token features ``[B, L, D]``."""
    k = F.normalize(keys, dim=-1)
    return k @ k.transpose(1, 2)


# ---------------------------------------------------------------- views (CLIP augmentations)

def draw_views(gen: torch.Generator, height: int, width: int, n_aug: int) -> list[tuple[int, int, int, int, bool]]:
    """``n_aug`` views ``(top, left, h, w, flip)``: view 0 is the whole image unflipped, the others
    crops with sides ``U(0.6, 1)`` of the image's at uniform positions, flipped with p = 0.5.
    Every number comes from ``gen``, so the views are a function of the seed alone."""
    views = [(0, 0, height, width, False)]
    for _ in range(n_aug - 1):
        s = CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * float(torch.rand((), generator=gen))
        h, w = max(1, int(height * s)), max(1, int(width * s))
        top = int(torch.randint(0, height - h + 1, (), generator=gen))
        left = int(torch.randint(0, width - w + 1, (), generator=gen))
        flip = bool(torch.rand((), generator=gen) < 0.5)
        views.append((top, left, h, w, flip))
    return views


def apply_views(x: torch.Tensor, views, size: tuple[int, int]) -> torch.Tensor:
    """Crop, flip and bicubic-resize ``x`` (``[1, 3, H, W]``) to ``size`` for every view -> ``[V, 3, *size]``."""
    out = []
    for top, left, h, w, flip in views:
        v = x[:, :, top : top + h, left : left + w]
        if flip:
            v = v.flip(-1)
        out.append(F.interpolate(v, size=size, mode="bicubic", align_corners=False))
    return torch.cat(out)


# ---------------------------------------------------------------- the guide CLIP

class GuideClip:
    """A loaded CLIP used as the guide: image features (with the last block's keys captured for
    the structure term) and caption features, each caption encoded alone and cached."""

    def __init__(self, clip: LoadedClip):
        self.clip = clip
        model = clip.model
        visual = getattr(model, "visual", None)
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        attn = getattr(blocks[-1], "attn", None) if blocks else None
        if not isinstance(attn, nn.MultiheadAttention) or getattr(attn, "in_proj_weight", None) is None:
            raise ModelLoadError(
                f"guide CLIP {clip.identity.get('backbone')!r}: the structure term reads the keys of the vision "
                f"transformer's last attention block, but {type(visual).__name__} has no nn.MultiheadAttention there; "
                f"use a ViT guide (e.g. ViT-B-32, or world:clip-guide)")
        self._block = blocks[-1]
        self._batch_first = bool(getattr(visual.transformer, "batch_first", True))
        grid = visual.grid_size
        self.n_patches = int(grid[0]) * int(grid[1])
        self.size = clip.image_size
        self.mean, self.std = clip.preprocess_cfg["mean"], clip.preprocess_cfg["std"]
        self._captured: list[torch.Tensor] = []
        self._capturing = False  # only encode_views captures: other users of the model keep no tensors here
        self._block.ln_1.register_forward_hook(lambda _m, _i, out: self._captured.append(out) if self._capturing else None)
        self._text: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return self.clip.device

    def encode_views(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Views ``[V, 3, S, S]`` in [0, 1] (already at the guide's size) -> (L2-normalised image
        features ``[V, D]``, patch keys of the last block ``[V, P, D']``)."""
        self._captured.clear()
        self._capturing = True
        try:
            feats = self.clip.model.encode_image(normalize(views, self.mean, self.std))
        finally:
            self._capturing = False
        h = self._captured[-1]
        self._captured.clear()
        if not self._batch_first:
            h = h.transpose(0, 1)
        attn = self._block.attn
        d = attn.embed_dim
        keys = F.linear(h, attn.in_proj_weight[d : 2 * d],
                        None if attn.in_proj_bias is None else attn.in_proj_bias[d : 2 * d])
        return F.normalize(feats.float(), dim=-1), keys[:, -self.n_patches :].float()

    @torch.no_grad()
    def encode_text(self, caption: str) -> torch.Tensor:
        """L2-normalised caption features ``[D]``; one caption per call (batching would round
        differently), each distinct caption once."""
        if caption not in self._text:
            tokens = self.clip.tokenizer([caption]).to(self.device)
            self._text[caption] = F.normalize(self.clip.model.encode_text(tokens).float(), dim=-1)[0]
        return self._text[caption]


_METRIC_IDENTITIES: dict[tuple, dict] = {}


def _metric_fields(metric_clip) -> tuple[str, str | None]:
    """(model, pretrained) of a metric CLIP spec given as a mapping, an object with ``model`` /
    ``pretrained`` attributes (``bench.spec.ClipMetricSpec``), a tuple, or a bare model name."""
    if isinstance(metric_clip, str):
        return metric_clip, None
    if isinstance(metric_clip, (tuple, list)) and len(metric_clip) == 2:
        return str(metric_clip[0]), metric_clip[1]
    if isinstance(metric_clip, Mapping):
        if "model" not in metric_clip:
            raise SpecError(f"metric_clip: expected a mapping with 'model' (and 'pretrained'), got {dict(metric_clip)!r}")
        return str(metric_clip["model"]), metric_clip.get("pretrained")
    if hasattr(metric_clip, "model"):
        return str(metric_clip.model), getattr(metric_clip, "pretrained", None)
    raise SpecError(f"metric_clip: expected {{model, pretrained}}, a (model, pretrained) pair or a model name, "
                    f"got {type(metric_clip).__name__}")


def metric_clip_identity(metric_clip) -> dict:
    """The identity (backbone, pretrained, weights hash) of the metric CLIP, loaded once on the
    CPU through :func:`ip2p.metrics.load_clip` and cached by (model, pretrained)."""
    key = _metric_fields(metric_clip)
    if key not in _METRIC_IDENTITIES:
        _METRIC_IDENTITIES[key] = dict(load_clip(key[0], key[1], device="cpu").identity)
    return _METRIC_IDENTITIES[key]


def check_guide_differs(guide: Mapping[str, Any], metric: Mapping[str, Any], *, force: bool) -> bool:
    """True when the guide CLIP and the metric CLIP have the same weights (the weights hash covers
    names, shapes and values, hence the backbone too). Same weights and not ``force``: SpecError
    naming both."""
    same = bool(guide.get("weights_hash")) and guide.get("weights_hash") == metric.get("weights_hash")
    if same and not force:
        raise SpecError(
            f"text2live: the guide CLIP {guide.get('backbone')!r} (pretrained {guide.get('pretrained')!r}, weights "
            f"{guide.get('weights_hash')}) is the metric CLIP {metric.get('backbone')!r} (pretrained "
            f"{metric.get('pretrained')!r}, weights {metric.get('weights_hash')}): an editor optimised against the "
            f"metric's own CLIP games the metric. Use another guide (world:clip-guide in the small world; e.g. "
            f"ViT-B-32 when the metrics use ViT-L-14), or pass force_same_guide=True (rows then record "
            f"guide_equals_metric=true)")
    return same


# ---------------------------------------------------------------- the editor

class Text2LiveEditor:
    """Text2Live-style editing behind the harness protocol (``ip2p.protocol.Editor``)."""

    name = "text2live"
    # knob -> default. Weights follow Text2Live's image config (composition 1, structure 2,
    # sparsity 6 * 0.01 per term); iterations and the learning rate suit the 64x64 world on a CPU
    # (Text2Live: 1000 epochs at lr 2.5e-3 on 512x512 on a GPU).
    declared_knobs: Mapping[str, Knob] = {
        "iterations": Knob("int", default=100, minimum=0,
                           doc="optimisation steps of the edit layer (0: the input is returned)"),
        "learning_rate": Knob("float", default=2.5e-3, minimum=0.0, doc="Adam learning rate of the edit-layer generator"),
        "lambda_composition": Knob("float", default=1.0, minimum=0.0,
                                   doc="weight of 1 - cos(I(composite), T(output caption))"),
        "lambda_direction": Knob("float", default=1.0, minimum=0.0,
                                 doc="weight of 1 - cos(I(composite) - I(input), T(output) - T(input caption))"),
        "lambda_structure": Knob("float", default=2.0, minimum=0.0,
                                 doc="weight of the guide ViT key self-similarity MSE, composite vs input"),
        "lambda_sparsity": Knob("float", default=0.06, minimum=0.0,
                                doc="weight of mean(alpha) + mean(2 sigmoid(5 alpha) - 1)"),
        "n_aug": Knob("int", default=8, minimum=1, doc="CLIP views per step (the whole image plus random crops/flips)"),
        "resize": resize_knob(None, ("paper", None)),
    }
    knobs: Mapping[str, Any] = knob_defaults(declared_knobs)

    def __init__(self, guide: LoadedClip, *, device: str | torch.device | None = None, resize: str | None = None,
                 resolution: int = 512, metric_clip=None, force_same_guide: bool = False, progress: bool = True,
                 generator_width: int = GENERATOR_WIDTH):
        """``guide``: a CLIP from :func:`ip2p.metrics.load_clip`. ``resize``: None (keep the input
        size) or ``"paper"`` (InstructPix2Pix's resize to ``resolution``). ``metric_clip``: the
        sweep's metric CLIP (mapping with model/pretrained), checked against the guide."""
        if resize not in ("paper", None):
            raise ValueError(f"resize must be 'paper' or None, got {resize!r}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if guide.device != self.device:
            guide.model.to(self.device)
        self.guide = GuideClip(guide)
        self.resize = resize
        self.resolution = int(resolution)
        self.progress = bool(progress)
        self.generator_width = int(generator_width)
        self.force_same_guide = bool(force_same_guide)
        self.metric_identity = None if metric_clip is None else metric_clip_identity(metric_clip)
        self.guide_equals_metric = (None if self.metric_identity is None else
                                    check_guide_differs(guide.identity, self.metric_identity, force=self.force_same_guide))

    def identity(self) -> dict[str, Any]:
        """Method, guide CLIP (its weights hash is the model hash), settings, and the guide/metric check."""
        g = self.guide.clip.identity
        return {
            "method": self.name, "source": g.get("backbone"), "weights_hash": g.get("weights_hash"),
            "guide": {k: g.get(k) for k in ("backbone", "pretrained", "weights_hash", "arch", "precision")},
            "generator": f"EditLayerGenerator(width={self.generator_width})", "optimizer": "Adam",
            "views": f"whole + crops {CROP_SCALE} + hflip", "structure": "guide ViT last-block key self-similarity",
            "resize": self.resize, "resolution": self.resolution,
            "metric_clip": None if self.metric_identity is None else
            {k: self.metric_identity.get(k) for k in ("backbone", "pretrained", "weights_hash")},
            "guide_equals_metric": self.guide_equals_metric, "force_same_guide": self.force_same_guide,
        }

    def preprocess(self, image, resize: str | None = None, *, index: int = 0) -> torch.Tensor:
        """One input (tensor in [0,1], PIL image or path) -> float ``[3, H, W]`` in [0, 1]:
        as given (``resize=None``) or InstructPix2Pix's paper resize to ``resolution``."""
        return process_input(image, resize, self.resolution, index=index)

    # ------------------------------------------------------------ protocol

    def _resolve(self, r: EditRequest, i: int = 0) -> dict[str, Any]:
        declared = {**self.declared_knobs, "resize": resize_knob(self.resize, ("paper", None))}
        return resolve_knobs(declared, r.knobs, method=self.name, item_id=r.item_id, index=i)

    def metric_input(self, request: EditRequest) -> torch.Tensor:
        """The input as this method processed it: what the metrics compare its output with."""
        return self.preprocess(request.image, self._resolve(request)["resize"])

    def run(self, requests: Sequence[EditRequest], **kwargs) -> list[torch.Tensor]:
        """Edit every request (knobs per request); every request is checked before any work starts.
        One ``[3, H, W]`` image in [0, 1] per request, in order."""
        knobs = [self._resolve(r, i) for i, r in enumerate(requests)]
        for i, (r, k) in enumerate(zip(requests, knobs)):
            self._check_request(r, k, i)
        images = [self.preprocess(r.image, k["resize"], index=i) for i, (r, k) in enumerate(zip(requests, knobs))]
        from tqdm.auto import tqdm

        outs = []
        bar = tqdm(list(zip(requests, knobs, images)), desc=self.name, unit="item", disable=not self.progress,
                   leave=False)
        for i, (r, k, x) in enumerate(bar):
            out = self.optimise(x, r.input_caption, r.output_caption, k, int(r.seed))
            if not torch.isfinite(out).all():
                raise NonFiniteOutputError(f"{who(r.item_id, i)}: text2live produced NaN/Inf (knobs {k}, seed {r.seed}); "
                                           f"lower learning_rate")
            outs.append(out)
        return outs

    def _check_request(self, r: EditRequest, k: Mapping[str, Any], i: int) -> None:
        """The captions the losses need (knob values are checked against their declarations)."""
        name = who(r.item_id, i)
        if not isinstance(r.output_caption, str) or not r.output_caption.strip():
            raise DataRowError(f"{name}: output_caption is empty; text2live optimises toward the output caption "
                               f"(give each request its output_caption, or use a test set that has them)")
        if float(k["lambda_direction"]) != 0 and (not isinstance(r.input_caption, str) or not r.input_caption.strip()):
            raise DataRowError(f"{name}: input_caption is empty; the direction term needs it "
                               f"(give it, or set knob lambda_direction to 0)")

    # ------------------------------------------------------------ one image

    def optimise(self, image: torch.Tensor, input_caption: str, output_caption: str, knobs: Mapping[str, Any],
                 seed: int) -> torch.Tensor:
        """Optimise one edit layer for ``image`` (``[3, H, W]`` in [0, 1]); returns the final
        composite ``[3, H, W]`` on the CPU. ``iterations == 0`` returns the input."""
        iterations = int(knobs["iterations"])
        if iterations == 0:
            return image.detach().float().cpu().clone()
        dev = self.device
        x = image.detach().float().to(dev)[None]
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # the CPU generator only; restored on exit
            net = EditLayerGenerator(self.generator_width)
        net.to(dev).train()
        opt = torch.optim.Adam(net.parameters(), lr=float(knobs["learning_rate"]))
        views_gen = torch.Generator().manual_seed(seed)
        t1 = self.guide.encode_text(output_caption)
        lam_d = float(knobs["lambda_direction"])
        t_dir = F.normalize(t1 - self.guide.encode_text(input_caption), dim=-1) if lam_d else None
        lam_c, lam_s, lam_sp = (float(knobs[k]) for k in ("lambda_composition", "lambda_structure", "lambda_sparsity"))
        n_aug = int(knobs["n_aug"])
        h, w = x.shape[-2:]
        for _ in range(iterations):
            views = draw_views(views_gen, h, w, n_aug)
            rgb, alpha = net(x)
            comp = composite(rgb, alpha, x)
            both = torch.cat([apply_views(comp, views, self.guide.size), apply_views(x, views, self.guide.size)])
            feats, keys = self.guide.encode_views(both)
            f_c, f_in = feats[:n_aug], feats[n_aug:].detach()
            loss = lam_c * (1 - f_c @ t1).mean() + lam_sp * sparsity_loss(alpha)
            if lam_d:
                loss = loss + lam_d * (1 - F.cosine_similarity(f_c - f_in, t_dir[None], dim=-1)).mean()
            if lam_s:
                sims = self_similarity(keys[[0, n_aug]])  # view 0 (whole image) of C and of I
                loss = loss + lam_s * F.mse_loss(sims[0], sims[1].detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            rgb, alpha = net(x)
            return composite(rgb, alpha, x)[0].clamp(0, 1).cpu()


def load_text2live(guide: str | os.PathLike = "ViT-B-32", *, pretrained: str | None = "openai", device=None,
                   resize: str | None = None, resolution: int = 512, metric_clip=None, force_same_guide: bool = False,
                   progress: bool = True, generator_width: int = GENERATOR_WIDTH) -> Text2LiveEditor:
    """A Text2Live-style editor guided by ``guide``: ``world:clip-guide``, a CLIP folder, or an
    open_clip architecture with ``pretrained`` (a tag such as ``openai``, or a weights file);
    ``pretrained`` is ignored for folders. ``metric_clip``: the metric CLIP to refuse as a guide."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    clip = load_clip(str(guide), pretrained, dev)
    return Text2LiveEditor(clip, device=dev, resize=resize, resolution=resolution, metric_clip=metric_clip,
                           force_same_guide=force_same_guide, progress=progress, generator_width=generator_width)


# ---------------------------------------------------------------- registry

def _register() -> None:
    from ip2p.registry import register_method

    def factory(model: str | None = None, device: str | None = None, metric_clip=None, **options: Any) -> Text2LiveEditor:
        return load_text2live(model or "ViT-B-32", device=device, metric_clip=metric_clip, **options)

    register_method(
        "text2live",
        factory,
        editor_class=Text2LiveEditor,
        default_model="ViT-B-32",
        description="Text2Live-style: per-image RGBA edit layer optimised with CLIP losses toward the output caption "
                    "(Bar-Tal et al.); model: the guide CLIP (world:clip-guide, or an open_clip name with option "
                    "pretrained), never the metric CLIP",
        demo_model="world:clip-guide",
        demo_grid={"iterations": [10, 30]},  # ~0.05-0.1 s an iteration per 64x64 item on 2 CPU cores
        demo_limit=48,
        curve_knob="iterations",
        replace=True,
    )


_register()

__all__ = ["Text2LiveEditor", "EditLayerGenerator", "GuideClip", "load_text2live", "check_guide_differs",
           "metric_clip_identity", "composite", "sparsity_loss", "self_similarity", "draw_views", "apply_views"]
