"""FLOP counts of a model forward pass, from the shapes each layer sees: the figure that turns a
measured latency into achieved TFLOP/s and a share of the device's peak (``ip2p profile``).

The count follows the usual matmul convention (the one ``torch.utils.flop_counter`` uses): one
multiply-add is 2 FLOPs, and only matrix-class work is counted:

- ``nn.Conv1d/2d/3d``: ``2 * out.numel() * (C_in / groups) * prod(kernel)`` (bias not counted);
- ``nn.Linear``: ``2 * out.numel() * in_features`` (bias not counted);
- attention products: ``F.scaled_dot_product_attention`` with q ``[.., L_q, E]``, k ``[.., L_k, E]``,
  v ``[.., L_k, E_v]`` counts ``2 * (batch*heads) * L_q * L_k * (E + E_v)`` (QK^T, then AV);
  ``torch.bmm`` / ``torch.baddbmm`` / ``torch.matmul`` on 3-D or higher operands (the classic,
  non-SDPA attention processors) count ``2 * b * m * n * k``.

Normalisations, activations, softmax and elementwise guidance arithmetic are not counted (they are
bandwidth-bound and small next to the matmuls). Convolutions and linears are counted by forward
hooks on the modules, attention products by a ``TorchFunctionMode`` that reads the operands'
shapes: nothing here dispatches through aten, so the count is independent of torch's own
``FlopCounterMode`` (the tests compare the two).

Large models are counted on the ``meta`` device (``meta_clone``): shapes only, no memory, no
arithmetic, so SD 1.5's UNet at 512x512 (64x64 latents) counts in well under a second on a CPU.
"""
from __future__ import annotations

import math
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["FlopCount", "counting", "count_flops", "meta_clone", "unet_forward_flops", "conv_flops", "linear_flops",
           "attention_flops", "matmul_flops"]


# ---------------------------------------------------------------- formulas

def conv_flops(out_shape, in_channels: int, groups: int, kernel_size) -> int:
    """``2 * numel(out) * (C_in / groups) * prod(kernel)`` for a (non-transposed) convolution."""
    return 2 * math.prod(out_shape) * (in_channels // groups) * math.prod(kernel_size)


def linear_flops(out_shape, in_features: int) -> int:
    """``2 * numel(out) * in_features``: each output element is an ``in_features``-long dot product."""
    return 2 * math.prod(out_shape) * in_features


def attention_flops(q_shape, k_shape, v_shape) -> int:
    """QK^T then AV for q ``[*, L_q, E]``, k ``[*, L_k, E]``, v ``[*, L_k, E_v]`` (``*`` = batch, heads)."""
    *lead, l_q, e = q_shape
    l_k, e_v = k_shape[-2], v_shape[-1]
    bh = math.prod(lead)
    return 2 * bh * l_q * l_k * e + 2 * bh * l_q * l_k * e_v


def matmul_flops(a_shape, b_shape) -> int:
    """``2 * b * m * n * k`` for a (batched) product ``[*, m, k] @ [*, k, n]``; 1-D operands are
    treated as vectors (``m`` or ``n`` of 1)."""
    a = list(a_shape) if len(a_shape) > 1 else [1, *a_shape]
    b = list(b_shape) if len(b_shape) > 1 else [*b_shape, 1]
    m, k = a[-2], a[-1]
    n = b[-1]
    batch = torch.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    return 2 * math.prod(batch) * m * n * k


# ---------------------------------------------------------------- the counter

class FlopCount:
    """Totals of one counting run: ``total`` FLOPs and the split by kind (``conv``, ``linear``,
    ``attention``, ``matmul``) and by module type name."""

    def __init__(self) -> None:
        self.by_kind: dict[str, int] = defaultdict(int)
        self.by_module_type: dict[str, int] = defaultdict(int)

    @property
    def total(self) -> int:
        return int(sum(self.by_kind.values()))

    def add(self, kind: str, flops: int, module_type: str | None = None) -> None:
        self.by_kind[kind] += int(flops)
        if module_type:
            self.by_module_type[module_type] += int(flops)

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "by_kind": dict(self.by_kind), "by_module_type": dict(self.by_module_type)}

    def __repr__(self) -> str:
        return f"FlopCount(total={self.total / 1e9:.3f} GFLOP, by_kind={dict(self.by_kind)})"


class _AttentionProducts(TorchFunctionMode):
    """Counts attention-class products from their operands' shapes (outermost call only)."""

    _BATCHED = {torch.bmm, torch.Tensor.bmm, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__}

    def __init__(self, count: FlopCount):
        super().__init__()
        self.count = count

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = (kwargs.get(n, a) for n, a in zip(("query", "key", "value"), (*args[:3], None, None, None)))
            self.count.add("attention", attention_flops(q.shape, k.shape, v.shape), "scaled_dot_product_attention")
        elif func in (torch.baddbmm, torch.Tensor.baddbmm):
            a, b = args[1], args[2]
            self.count.add("matmul", matmul_flops(a.shape, b.shape), "baddbmm")
        elif func in self._BATCHED and len(args) >= 2 and isinstance(args[1], torch.Tensor):
            a, b = args[0], args[1]
            if a.ndim >= 3 or b.ndim >= 3:  # 2-D products come from modules that hooks already count
                self.count.add("matmul", matmul_flops(a.shape, b.shape), getattr(func, "__name__", "matmul"))
        return func(*args, **kwargs)


_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@contextmanager
def counting(model: nn.Module) -> Iterator[FlopCount]:
    """Count the FLOPs of every forward pass run on ``model`` inside the ``with`` block."""
    count = FlopCount()

    def on_conv(mod, inputs, out):
        count.add("conv", conv_flops(out.shape, mod.in_channels, mod.groups, mod.kernel_size), type(mod).__name__)

    def on_linear(mod, inputs, out):
        count.add("linear", linear_flops(out.shape, mod.in_features), type(mod).__name__)

    handles = []
    for mod in model.modules():
        if isinstance(mod, _CONV_TYPES):
            handles.append(mod.register_forward_hook(on_conv))
        elif isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(on_linear))
    try:
        with _AttentionProducts(count):
            yield count
    finally:
        for h in handles:
            h.remove()


def count_flops(model: nn.Module, *args, **kwargs) -> FlopCount:
    """FLOPs of ``model(*args, **kwargs)`` (run once, without gradients)."""
    with torch.no_grad(), counting(model) as count:
        model(*args, **kwargs)
    return count


# ---------------------------------------------------------------- counting big models cheaply

def meta_clone(model: nn.Module) -> nn.Module:
    """The same architecture on the ``meta`` device (no weights, no memory): a diffusers model
    through ``from_config``, a transformers model through its ``config``."""
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper
    cls = type(model)
    with torch.device("meta"):
        if hasattr(cls, "from_config") and hasattr(model, "config") and isinstance(model.config, dict):
            clone = cls.from_config(model.config)
        elif hasattr(model, "config"):
            clone = cls(model.config)
        else:
            raise TypeError(f"meta_clone: cannot rebuild a {cls.__name__} from a config; count it on a real device")
    return clone.eval()


def unet_forward_flops(unet: nn.Module, batch: int, latent_hw: tuple[int, int], *, text_tokens: int = 77) -> FlopCount:
    """FLOPs of one UNet forward at latent size ``latent_hw`` for ``batch`` samples, counted on a
    meta clone (``unet`` itself is not run). Divide ``total`` by ``batch`` for per-sample figures."""
    cfg = unet.config if not hasattr(unet, "_orig_mod") else unet._orig_mod.config
    meta = meta_clone(unet)
    h, w = latent_hw
    xattn = cfg.cross_attention_dim
    xattn = int(xattn[0] if isinstance(xattn, (list, tuple)) else xattn)
    sample = torch.empty(batch, int(cfg.in_channels), h, w, device="meta")
    t = torch.empty(batch, device="meta")
    text = torch.empty(batch, text_tokens, xattn, device="meta")
    return count_flops(meta, sample, t, encoder_hidden_states=text, return_dict=False)
