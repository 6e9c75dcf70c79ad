"""Training samples as a deterministic function of (seed, position).

Every sample drawn in training has a global position
``p = ((step * grad_accum + micro_step) * world_size + rank) * batch_size + j``. Its dataset index
comes from a seeded permutation per epoch (``epoch = p // N``), and all its randomness -- crop
offsets, flip, conditioning-dropout draw r, timestep, noise, the VAE posterior sample -- comes
from a generator seeded by (seed, p). So the data order and every random number depend on the seed
and the step only: a run stopped and resumed at step k continues exactly as an uninterrupted run,
and the samples of a global batch do not depend on how many processes share it.
"""
from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from ip2p.data.rows import BadRowLog
from ip2p.data.types import EditExample
from ip2p.errors import DataRowError, ImageReadError

log = logging.getLogger("ip2p.train")


def derive_seed(seed: int, *parts) -> int:
    """A 63-bit seed that depends only on ``seed`` and ``parts``."""
    h = hashlib.sha256("/".join(str(x) for x in (seed, *parts)).encode()).digest()
    return int.from_bytes(h[:8], "big") >> 1


def generator(seed: int, *parts) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *parts))


def sample_position(step: int, micro_step: int, rank: int, j: int, *, grad_accum: int, world_size: int, batch_size: int) -> int:
    return ((step * grad_accum + micro_step) * world_size + rank) * batch_size + j


def paired_crop_flip(a: torch.Tensor, b: torch.Tensor, size: int, g: torch.Generator, flip: bool = True):
    """The same resize, random ``size`` x ``size`` crop and horizontal flip (p 0.5) for both images.

    ``a`` and ``b`` are ``[3, H, W]``; ``b`` is first resized to ``a``'s size if they differ, then
    both are resized so the short side is ``size`` (antialiased bilinear) when it is not already.
    Draws from ``g``: crop top, crop left, flip.
    """
    if b.shape[-2:] != a.shape[-2:]:
        b = F.interpolate(b[None], size=a.shape[-2:], mode="bilinear", antialias=True, align_corners=False)[0]
    h, w = a.shape[-2:]
    if min(h, w) != size:
        f = size / min(h, w)
        nh, nw = max(size, round(h * f)), max(size, round(w * f))
        ab = F.interpolate(torch.stack([a, b]), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        a, b = ab[0], ab[1]
        h, w = nh, nw
    top = int(torch.randint(0, h - size + 1, (1,), generator=g))
    left = int(torch.randint(0, w - size + 1, (1,), generator=g))
    do_flip = bool(torch.rand((), generator=g) < 0.5)
    a = a[:, top : top + size, left : left + size]
    b = b[:, top : top + size, left : left + size]
    if flip and do_flip:
        a, b = a.flip(-1), b.flip(-1)
    return a.contiguous(), b.contiguous()


class EpochOrder:
    """Dataset index of a position: a seeded permutation of the N examples per epoch."""

    def __init__(self, n: int, seed: int):
        if n <= 0:
            raise DataRowError("the training dataset is empty (after filters, subset and bad-row skips)")
        self.n, self.seed = n, seed
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if epoch not in self._cache:
            self._cache[epoch] = torch.randperm(self.n, generator=generator(self.seed, "epoch", epoch))
            while len(self._cache) > 2:
                self._cache.popitem(last=False)
        return int(self._cache[epoch][offset])


class TrainSamples(torch.utils.data.Dataset):
    """Indexed by global position; returns one augmented pair and its random draws.

    A row whose image fails to load follows ``on_bad_row``: "raise" raises a DataRowError naming
    the row and field; "skip" logs it and deterministically takes the next dataset index instead.
    """

    def __init__(self, examples: Sequence[EditExample], *, seed: int, resolution: int, latent_channels: int,
                 latent_factor: int, flip: bool = True, on_bad_row: str = "raise"):
        self.examples = examples
        self.order = EpochOrder(len(examples), seed)
        self.seed, self.resolution, self.flip = seed, resolution, flip
        self.latent_shape = (latent_channels, resolution // latent_factor, resolution // latent_factor)
        self.bad = BadRowLog(on_bad_row)

    def __len__(self) -> int:  # positions are unbounded; len is only informative
        return len(self.examples)

    def _load(self, index: int):
        for attempt in range(len(self.examples)):
            ex = self.examples[(index + attempt) % len(self.examples)]
            src = ex.source or ex.item_id
            images = []
            for field, load in (("input_image", ex.load_input), ("target_image", ex.load_target)):
                try:
                    x = load()
                    if x is None:
                        raise DataRowError("no edited image to train on")
                    images.append(x)
                except (ImageReadError, DataRowError) as e:
                    self.bad.report(src, field, str(e))  # raises under "raise"
                    break
            if len(images) == 2:
                return ex, images[0], images[1]
        raise DataRowError("every training row failed to load")

    def __getitem__(self, position: int) -> dict:
        ex, a, b = self._load(self.order.index(position))
        g = generator(self.seed, "sample", position)
        a, b = paired_crop_flip(a.float(), b.float(), self.resolution, g, self.flip)
        r = torch.rand((), generator=g)
        t_unit = torch.rand((), generator=g)  # timestep = floor(t_unit * T), T known to the trainer
        noise = torch.randn(self.latent_shape, generator=g)
        posterior_eps = torch.randn(self.latent_shape, generator=g)
        return {
            "input": a * 2 - 1,  # pixels to model: 2x - 1
            "edited": b * 2 - 1,
            "instruction": ex.instruction,
            "r": r,
            "t_unit": t_unit,
            "noise": noise,
            "posterior_eps": posterior_eps,
            "position": position,
        }


class StepBatches(torch.utils.data.Sampler):
    """Batches of positions for this rank, step by step from ``start_step`` to ``max_steps``."""

    def __init__(self, start_step: int, max_steps: int, *, grad_accum: int, world_size: int, rank: int, batch_size: int):
        self.start_step, self.max_steps = start_step, max_steps
        self.kw = dict(grad_accum=grad_accum, world_size=world_size, batch_size=batch_size)
        self.rank, self.grad_accum, self.batch_size = rank, grad_accum, batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.max_steps):
            for m in range(self.grad_accum):
                yield [sample_position(step, m, self.rank, j, **self.kw) for j in range(self.batch_size)]

    def __len__(self) -> int:
        return (self.max_steps - self.start_step) * self.grad_accum
