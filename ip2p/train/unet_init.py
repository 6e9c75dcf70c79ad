"""Turn a text-to-image UNet into an InstructPix2Pix UNet: ``conv_in`` widened from 4 to 8 input
channels (REFERENCE.md, "Training"). The first 4 input channels keep the pretrained kernel, the 4
new ones (the image-conditioning latent) start at zero, and the bias is copied, so the widened
UNet computes exactly what the text-to-image UNet did while the new channels hold zeros.
"""
from __future__ import annotations

import torch
from torch import nn

from ip2p.errors import ModelLoadError


@torch.no_grad()
def widen_conv_in(unet, in_channels: int = 8):
    """Replace ``unet.conv_in`` by a conv with ``in_channels`` inputs; updates ``unet.config``.

    Returns the same UNet object. A UNet that already has ``in_channels`` inputs is returned as is.
    """
    old: nn.Conv2d = unet.conv_in
    if old.in_channels == in_channels:
        return unet
    if old.in_channels > in_channels:
        raise ModelLoadError(f"UNet conv_in has {old.in_channels} input channels; cannot narrow it to {in_channels}")
    new = nn.Conv2d(in_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride, padding=old.padding,
                    dilation=old.dilation, groups=old.groups, bias=old.bias is not None, padding_mode=old.padding_mode)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    new.weight.zero_()
    new.weight[:, : old.in_channels].copy_(old.weight)
    if old.bias is not None:
        new.bias.copy_(old.bias)
    new.weight.requires_grad_(old.weight.requires_grad)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet
