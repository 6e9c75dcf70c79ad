"""CLIP similarities of an edit (InstructPix2Pix, REFERENCE.md "Metrics"): ``sim_0``, ``sim_1``,
``sim_direction`` and ``sim_image``, from an open_clip model, with content-keyed embedding caching so
that a sweep encodes each distinct image and caption exactly once.

With L2-normalised features I0 = E_img(input), I1 = E_img(edited), T0 = E_txt(input caption),
T1 = E_txt(output caption)::

    sim_0         = cos(I0, T0)
    sim_1         = cos(I1, T1)
    sim_direction = cos(I1 - I0, T1 - T0)     (0 when either difference is exactly zero)
    sim_image     = cos(I0, I1)

The captions are the input and output captions, not the instruction.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ip2p.metrics.cache import EmbeddingCache, embedding_key
from ip2p.metrics.checks import check_images, check_texts
from ip2p.metrics.clip_models import LoadedClip, load_clip
from ip2p.metrics.preprocess import PREPROCESS_MODES, describe_preprocess, preprocess_images
from ip2p.util.hashing import hash_tensor

CAPTION_SOURCE = "input_caption/output_caption"


def clip_similarities(
    image_0: torch.Tensor, image_1: torch.Tensor, text_0: torch.Tensor, text_1: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The four similarities from features ``[N, D]`` (each L2-normalised): a dict of ``[N]``
    tensors ``sim_0, sim_1, sim_direction, sim_image`` (formulas in the module docstring)."""
    for name, t in (("image_1", image_1), ("text_0", text_0), ("text_1", text_1)):
        if t.shape != image_0.shape:
            raise ValueError(f"{name}: feature shape {tuple(t.shape)} differs from image_0's {tuple(image_0.shape)}")
    return {
        "sim_0": F.cosine_similarity(image_0, text_0, dim=-1),
        "sim_1": F.cosine_similarity(image_1, text_1, dim=-1),
        "sim_direction": F.cosine_similarity(image_1 - image_0, text_1 - text_0, dim=-1),
        "sim_image": F.cosine_similarity(image_0, image_1, dim=-1),
    }


class ClipSimilarity:
    """CLIP similarities of edits, with every embedding cached by content.

    ``model_name``/``pretrained``: as :func:`ip2p.metrics.clip_models.load_clip` (a built-in name
    with an open_clip tag or weights file, a folder, or ``world:clip``). ``preprocess``: ``"paper"``
    (default: the official square bicubic resize to the model's size and its mean/std, no crop),
    ``"open_clip"`` (the model's own transform) or ``"official-compat"`` (feeds ``2x - 1`` like the
    published script; only for comparison with published numbers). ``cache``: None for a private
    in-memory cache, an :class:`EmbeddingCache`, a path (shared on-disk cache), or False for none
    (inputs are still de-duplicated within each call). ``precision``: "fp32" (default) or "fp16".

    Call it with ``image_0, image_1`` float ``[N, 3, H, W]`` in [0, 1] and ``text_0, text_1`` lists
    of N strings; it returns ``{"sim_0", "sim_1", "sim_direction", "sim_image"}``, each a float32
    ``[N]`` tensor on the CPU. Raises ValueError naming the argument for a wrong range, shape or
    length. ``encoded_images`` / ``encoded_texts`` count the rows actually sent to the encoders.
    """

    def __init__(
        self,
        model_name: str = "ViT-L-14",
        pretrained: str | None = "openai",
        preprocess: str = "paper",
        device: str | torch.device | None = None,
        cache: EmbeddingCache | str | None | bool = None,
        *,
        precision: str = "fp32",
        batch_size: int = 64,
        caption_source: str = CAPTION_SOURCE,
        loaded: LoadedClip | None = None,
    ):
        if preprocess not in PREPROCESS_MODES:
            raise ValueError(f"preprocess: expected one of {PREPROCESS_MODES}, got {preprocess!r}")
        self.clip = loaded if loaded is not None else load_clip(model_name, pretrained, device, precision=precision)
        self.preprocess = preprocess
        self.batch_size = int(batch_size)
        self.caption_source = caption_source
        if cache is None:
            cache = EmbeddingCache()
        elif cache is False:
            cache = None
        elif not isinstance(cache, EmbeddingCache):
            cache = EmbeddingCache(cache)
        self.cache: EmbeddingCache | None = cache
        # cache namespaces: what an embedding depends on (architecture, weights, precision, and the
        # preprocessing or the tokenizer), not where the files lie
        ident = {k: self.clip.identity.get(k) for k in ("arch", "weights_hash", "precision")}
        pre = describe_preprocess(preprocess, self.clip.preprocess_cfg)
        self._ns_image = json.dumps({"model": ident, "preprocess": pre}, sort_keys=True)
        self._ns_text = json.dumps({"model": ident, "tokenizer": self.clip.identity.get("tokenizer")}, sort_keys=True)
        self.encoded_images = 0
        self.encoded_texts = 0

    @classmethod
    def from_loaded(cls, loaded: LoadedClip, preprocess: str = "paper", cache=None, **kw) -> "ClipSimilarity":
        """Wrap an already loaded CLIP (e.g. shared with a baseline) without loading it again."""
        return cls(preprocess=preprocess, cache=cache, loaded=loaded, **kw)

    # -- provenance ----------------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """What every value depends on: backbone, pretrained, weights hash, preprocessing, captions."""
        import open_clip

        ident = self.clip.identity
        return {
            "backbone": ident["backbone"],
            "pretrained": ident["pretrained"],
            "weights_hash": ident["weights_hash"],
            "precision": ident["precision"],
            "arch": ident.get("arch"),
            "tokenizer": ident.get("tokenizer"),
            "preprocess": describe_preprocess(self.preprocess, self.clip.preprocess_cfg),
            "caption_source": self.caption_source,
            "library": f"open_clip {open_clip.__version__}",
        }

    # -- raw, differentiable encoders ---------------------------------------------------------
    @property
    def _dtype(self) -> torch.dtype:
        """The image tower's compute dtype (open_clip's fp16 keeps embeddings and norms in fp32)."""
        for m in self.clip.model.visual.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                return m.weight.dtype
        return next(self.clip.model.parameters()).dtype

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised image features ``[N, D]`` (float32, model device) of ``x`` float
        ``[N, 3, H, W]`` in [0, 1]; no cache, gradients flow to ``x`` (for guidance)."""
        check_images(x, "images")
        x = x.to(self.clip.device)
        pre = preprocess_images(x, self.preprocess, self.clip.preprocess_cfg).to(self._dtype)
        feats = [self.clip.model.encode_image(pre[i : i + self.batch_size]) for i in range(0, len(pre), self.batch_size)]
        self.encoded_images += len(pre)
        return F.normalize(torch.cat(feats).float(), dim=-1)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text features ``[N, D]`` (float32, model device); truncated to context."""
        texts = check_texts(texts, "texts")
        if not texts:
            raise ValueError("texts: empty list")
        tokens = self.clip.tokenizer(texts).to(self.clip.device)
        feats = [self.clip.model.encode_text(tokens[i : i + self.batch_size]) for i in range(0, len(tokens), self.batch_size)]
        self.encoded_texts += len(tokens)
        return F.normalize(torch.cat(feats).float(), dim=-1)

    # -- cached, de-duplicated embeddings -----------------------------------------------------
    def image_keys(self, x: torch.Tensor) -> list[str]:
        """Cache keys of the images in ``x``: model identity, preprocessing and the exact tensor."""
        cpu = x.detach().cpu()
        return [embedding_key(self._ns_image, "image", hash_tensor(cpu[i], length=32)) for i in range(len(cpu))]

    def text_keys(self, texts: Sequence[str]) -> list[str]:
        return [embedding_key(self._ns_text, "text", t) for t in texts]

    @torch.no_grad()
    def embed_images(self, x: torch.Tensor, name: str = "images") -> torch.Tensor:
        """Like :meth:`encode_images` (features on the CPU, no gradients), but each distinct image
        is encoded at most once: within the call and, through the cache, across calls."""
        check_images(x, name)
        keys = self.image_keys(x)
        return self._embed(keys, lambda idx: self.encode_images(x[idx]))

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], name: str = "texts") -> torch.Tensor:
        """Like :meth:`encode_texts`, each distinct text encoded at most once (see embed_images)."""
        texts = check_texts(texts, name)
        keys = self.text_keys(texts)
        return self._embed(keys, lambda idx: self.encode_texts([texts[i] for i in idx]))

    def _embed(self, keys: list[str], encode) -> torch.Tensor:
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        found = self.cache.get_many(first) if self.cache is not None else {}
        todo = [k for k in first if k not in found]
        if todo:
            feats = encode(torch.tensor([first[k] for k in todo])).cpu()
            new = dict(zip(todo, feats))
            if self.cache is not None:
                self.cache.put_many(new)
            found.update(new)
        return torch.stack([found[k] for k in keys])

    # -- the metric ------------------------------------------------------------------------------
    def __call__(
        self,
        image_0: torch.Tensor,
        image_1: torch.Tensor,
        text_0: Sequence[str],
        text_1: Sequence[str],
    ) -> dict[str, torch.Tensor]:
        """``sim_0, sim_1, sim_direction, sim_image`` per item (see the module docstring).

        ``image_0``: input images, ``image_1``: edited images, float ``[N, 3, H, W]`` in [0, 1]
        (the two may differ in size); ``text_0``/``text_1``: input/output captions, N each.
        """
        check_images(image_0, "image_0")
        n = image_0.shape[0]
        check_images(image_1, "image_1", n=n)
        text_0 = check_texts(text_0, "text_0", n=n)
        text_1 = check_texts(text_1, "text_1", n=n)
        i0 = self.embed_images(image_0, "image_0")
        i1 = self.embed_images(image_1, "image_1")
        t = self.embed_texts(text_0 + text_1, "text_0 + text_1")
        return clip_similarities(i0, i1, t[:n], t[n:])

    def score(self, inputs, outputs, text_0, text_1) -> dict[str, torch.Tensor]:
        """The harness's name for ``__call__``: rows of a sweep may repeat inputs and captions
        (one row per setting); every distinct image and caption is encoded once."""
        return self(inputs, outputs, text_0, text_1)

    @torch.no_grad()
    def image_similarity(self, image_a: torch.Tensor, image_b: torch.Tensor, names=("image_a", "image_b")) -> torch.Tensor:
        """``cos(E_img(a), E_img(b))`` per item, ``[N]`` (e.g. an edited image against its target)."""
        check_images(image_a, names[0])
        check_images(image_b, names[1], n=image_a.shape[0])
        return F.cosine_similarity(self.embed_images(image_a, names[0]), self.embed_images(image_b, names[1]), dim=-1)
