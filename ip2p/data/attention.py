"""The paper's Prompt-to-Prompt variant as a diffusers attention processor (REFERENCE.md, "Data
generation"): in the self-attention layers (``attn1``), the attention probabilities of the first
prompt's sample replace those of the second prompt's sample, for the pairs whose copy flag is on
at the current step.

The UNet's batch must be laid out as ``[uncond rows; cond rows]``, each half holding the pairs in
order, first prompt then second: rows ``h * 2B + 2j`` (first) and ``h * 2B + 2j + 1`` (second) for
pair ``j`` of ``B`` and half ``h``. This is the official sampler's order ({uncond, cond} x
{prompt 1, prompt 2}), which copies the pre-softmax scores ``sim`` of prompt 1 into prompt 2 in both
halves; copying the scores or the probabilities is the same thing (softmax is row-wise).

A copied row computes ``softmax(q_first k_first^T / sqrt(d)) v_second``: its own values, the first
sample's map. The copy is done by handing the first sample's queries and keys to the second row
of one ``scaled_dot_product_attention`` call, so no ``[N, N]`` map is materialised (SD 1.5 at
512 px has 4096 tokens in its first layers). With a ``recorder`` attached, the maps are formed
explicitly, applied and stored (for tests and inspection).

Installed through diffusers' API: ``install_pair_attention(unet, state)`` calls
``unet.set_attn_processor`` with this processor on every ``attn1`` layer and the UNet's own
processor elsewhere; ``restore_attention(unet, saved)`` puts the previous processors back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["PairCopyState", "PairSelfAttentionProcessor", "install_pair_attention", "restore_attention"]


@dataclass
class PairCopyState:
    """What the processors read at each UNet call: ``copy`` (bool ``[B]``, one flag per pair) and,
    optionally, ``recorder``: a dict ``layer name -> list of [2B, heads, N, N] maps`` (per call)."""

    copy: torch.Tensor | None = None
    recorder: dict[str, list[torch.Tensor]] | None = None
    calls: int = 0  # UNet calls seen by the first attn1 layer (for bookkeeping in tests)
    layers: list[str] = field(default_factory=list)

    def pair_rows(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(source rows, destination rows) of the pairs whose flag is on, for a UNet batch of ``batch``."""
        if self.copy is None:
            empty = torch.empty(0, dtype=torch.long)
            return empty, empty
        b = int(self.copy.numel())
        if batch != 4 * b:
            raise ValueError(f"pair attention: UNet batch of {batch} rows, expected 4 x {b} pairs "
                             f"([uncond; cond] x [first, second])")
        pairs = torch.nonzero(self.copy.cpu(), as_tuple=False).reshape(-1)
        src = torch.cat([h * 2 * b + 2 * pairs for h in (0, 1)])
        return src, src + 1


class PairSelfAttentionProcessor:
    """Self-attention processor that copies the first prompt's attention map into the second's
    (module docstring). Without copies and without a recorder it is diffusers' scaled-dot-product
    attention on unchanged inputs."""

    def __init__(self, state: PairCopyState, name: str):
        self.state = state
        self.name = name

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs):
        if encoder_hidden_states is not None:
            raise ValueError(f"{self.name}: PairSelfAttentionProcessor is for self-attention (attn1) layers; "
                             f"it was given encoder_hidden_states (a cross-attention layer)")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, tokens, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        src, dst = self.state.pair_rows(batch)
        if len(dst):
            # the second sample attends with the first sample's queries and keys: its map is the first's
            query, key = query.clone(), key.clone()
            query[dst.to(query.device)] = query[src.to(query.device)]
            key[dst.to(key.device)] = key[src.to(key.device)]
            if attention_mask is not None:
                attention_mask = attention_mask.clone()
                attention_mask[dst.to(attention_mask.device)] = attention_mask[src.to(attention_mask.device)]

        if self.state.recorder is not None:
            scores = (query.float() @ key.float().transpose(-1, -2)) * (head_dim ** -0.5)
            if attention_mask is not None:
                scores = scores + attention_mask.float()
            probs = scores.softmax(dim=-1)
            self.state.recorder.setdefault(self.name, []).append(probs.detach().cpu())
            out = (probs @ value.float()).to(query.dtype)
        else:
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                                 is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install_pair_attention(unet, state: PairCopyState) -> dict[str, Any]:
    """Put a :class:`PairSelfAttentionProcessor` on every self-attention (``attn1``) layer of
    ``unet`` through ``unet.set_attn_processor``; other layers keep their processors. Returns the
    previous processors (for :func:`restore_attention`)."""
    saved = dict(unet.attn_processors)
    new = {}
    state.layers = []
    for name, proc in saved.items():
        if name.endswith("attn1.processor"):
            new[name] = PairSelfAttentionProcessor(state, name[: -len(".processor")])
            state.layers.append(name[: -len(".processor")])
        else:
            new[name] = proc
    if not state.layers:
        raise ValueError("the UNet has no self-attention (attn1) layers; Prompt-to-Prompt pairs need a "
                         "Stable-Diffusion-style UNet with transformer blocks")
    unet.set_attn_processor(new)
    return saved


def restore_attention(unet, saved: dict[str, Any]) -> None:
    unet.set_attn_processor(saved)
