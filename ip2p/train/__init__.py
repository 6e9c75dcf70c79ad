"""ip2p-bench training: InstructPix2Pix fine-tuning from a text-to-image model (accelerate).

``train(TrainConfig(base=..., data=..., out=...))`` or ``ip2p train --base ... --data ... --out ...``.
"""
from __future__ import annotations

__all__ = ["TrainConfig", "train", "widen_conv_in", "conditioning_dropout_masks", "EMA"]


def __getattr__(name):  # lazy: importing ip2p.train does not import diffusers
    if name == "TrainConfig":
        from ip2p.train.config import TrainConfig

        return TrainConfig
    if name == "train":
        from ip2p.train.trainer import train

        return train
    if name == "widen_conv_in":
        from ip2p.train.unet_init import widen_conv_in

        return widen_conv_in
    if name == "conditioning_dropout_masks":
        from ip2p.train.conditioning import conditioning_dropout_masks

        return conditioning_dropout_masks
    if name == "EMA":
        from ip2p.train.ema import EMA

        return EMA
    raise AttributeError(name)
