"""Prompt embeddings: the text encoder's hidden states for a list of prompts, computed as
diffusers' pipelines do (pad to ``model_max_length``, truncate, attention mask only when the
encoder's config asks for one), with a per-prompt cache so each distinct prompt is embedded once."""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str], device) -> torch.Tensor:
    """Hidden states ``[N, L, D]`` of ``prompts`` (no caching)."""
    tok = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt")
    mask = tok.attention_mask.to(device) if getattr(text_encoder.config, "use_attention_mask", False) else None
    return text_encoder(tok.input_ids.to(device), attention_mask=mask)[0]


class PromptEncoder:
    """``encoder(prompts) -> [N, L, D]`` in ``dtype``; each distinct prompt is encoded once and
    kept (least recently added first out beyond ``max_cached``)."""

    def __init__(self, tokenizer, text_encoder, device, dtype, *, chunk: int = 64, max_cached: int = 4096):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.device, self.dtype = device, dtype
        self.chunk, self.max_cached = chunk, max_cached
        self._cache: "OrderedDict[str, torch.Tensor]" = OrderedDict()

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        todo = [p for p in OrderedDict.fromkeys(prompts) if p not in self._cache]
        for start in range(0, len(todo), self.chunk):
            part = todo[start : start + self.chunk]
            emb = encode_prompts(self.tokenizer, self.text_encoder, part, self.device).to(self.dtype)
            self._cache.update(zip(part, emb))
        wanted = [self._cache[p] for p in prompts]
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return torch.stack(wanted)

    def clear(self) -> None:
        self._cache.clear()
