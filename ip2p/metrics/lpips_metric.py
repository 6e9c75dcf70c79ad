"""LPIPS (Zhang et al. 2018) through the ``lpips`` package, loaded without any download: the linear
layers ship inside the package, the backbone (torchvision AlexNet or VGG16 ImageNet weights) comes
from the torch hub cache, ``$TORCH_HOME/hub/checkpoints/`` (default ``~/.cache/torch/hub``).

``lpips(a, b)`` per item, for a, b float ``[N, 3, H, W]`` in [0, 1] (mapped to [-1, 1] inside):
the sum over layers l of the spatial mean of ``w_l . (phi_l(a) - phi_l(b))^2`` on unit-normalised
channels. 0 for identical images, larger is more different. A spatial map ``[N, H, W]`` (each
layer's map upsampled bilinearly to the input size, then summed) serves masked averages.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ip2p.errors import ModelLoadError
from ip2p.metrics.checks import check_images, check_same_shape
from ip2p.util.hashing import hash_state_dict

# net -> (torchvision weights enum name, lpips channel layout)
_BACKBONES = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}  # squeeze: PIE-Bench


def backbone_file(net: str) -> Path:
    """The file torchvision would download for ``net``'s ImageNet weights, in the torch hub cache."""
    import torchvision.models as tvm

    if net not in _BACKBONES:
        raise ValueError(f"net: expected one of {sorted(_BACKBONES)}, got {net!r}")
    url = getattr(tvm, _BACKBONES[net]).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


class LPIPS:
    """LPIPS with a backbone read from the local torch cache (never downloaded).

    ``net``: ``"alex"`` (default, as in most editing papers), ``"vgg"`` or ``"squeeze"`` (PIE-Bench). ``random_backbone=True``
    builds a randomly initialised backbone instead (tests only; values are then meaningless) and is
    recorded as such in :meth:`spec`. Raises ModelLoadError naming the exact file expected, and its
    download URL, when the backbone weights are absent.
    """

    def __init__(self, net: str = "alex", device: str | torch.device | None = None, *, random_backbone: bool = False):
        import lpips as lpips_pkg
        import torchvision.models as tvm

        if net not in _BACKBONES:
            raise ValueError(f"net: expected one of {sorted(_BACKBONES)}, got {net!r}")
        self.net = net
        self.random_backbone = bool(random_backbone)
        self.device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        path = backbone_file(net)
        if not self.random_backbone and not path.is_file():
            url = getattr(tvm, _BACKBONES[net]).IMAGENET1K_V1.url
            raise ModelLoadError(
                f"LPIPS({net}) backbone weights are missing: expected {path.name} in {path.parent} "
                f"($TORCH_HOME/hub/checkpoints). Place the file there (it is {url}), or set TORCH_HOME to "
                f"the folder whose hub/checkpoints/ holds it. Nothing is downloaded."
            )
        # pnet_rand=True: lpips builds its backbone without asking torchvision to download anything
        with warnings.catch_warnings():  # lpips still passes torchvision's deprecated `pretrained=`
            warnings.simplefilter("ignore", UserWarning)
            model = lpips_pkg.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        if not self.random_backbone:
            self._load_backbone(model, path)
        self.backbone_source = "random" if self.random_backbone else str(path)
        self.model = model.eval().to(self.device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.weights_hash = hash_state_dict(self.model)

    def _load_backbone(self, model, path: Path) -> None:
        import torchvision.models as tvm

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            tv = {"alex": tvm.alexnet, "vgg": tvm.vgg16, "squeeze": tvm.squeezenet1_1}[self.net](weights=None)
            tv.load_state_dict(state)
        except Exception as e:
            raise ModelLoadError(f"LPIPS({self.net}) backbone file {path} cannot be loaded ({e}); replace it with the torchvision ImageNet weights") from e
        features = tv.features
        # lpips splits torchvision's `features` into slices whose children keep the original indices
        for slice_ in (getattr(model.net, f"slice{i}") for i in range(1, model.net.N_slices + 1)):
            for idx, module in slice_.named_children():
                module.load_state_dict(features[int(idx)].state_dict())

    def spec(self) -> dict[str, Any]:
        from importlib.metadata import version

        return {
            "net": self.net,
            "version": "0.1",
            "backbone": self.backbone_source,
            "weights_hash": self.weights_hash,
            "input": "[0,1] mapped to [-1,1]",
            "library": f"lpips {version('lpips')}",
        }

    @torch.no_grad()
    def __call__(self, image_a: torch.Tensor, image_b: torch.Tensor, *, spatial: bool = False) -> torch.Tensor:
        """LPIPS per item ``[N]`` (or the map ``[N, H, W]`` with ``spatial=True``), float32 on the CPU.

        ``image_a``, ``image_b``: float ``[N, 3, H, W]`` in [0, 1], same shape. ValueError otherwise.
        """
        check_images(image_a, "image_a")
        check_images(image_b, "image_b", n=image_a.shape[0])
        check_same_shape(image_a, image_b, "image_a", "image_b")
        a = image_a.to(self.device, torch.float32) * 2 - 1
        b = image_b.to(self.device, torch.float32) * 2 - 1
        old = self.model.spatial
        self.model.spatial = spatial
        try:
            out = self.model(a, b)
        finally:
            self.model.spatial = old
        out = out[:, 0]
        return (out if spatial else out.view(-1)).float().cpu()
