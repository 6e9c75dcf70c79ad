"""What a run's manifest records about where it ran: package versions, git commit, hardware."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

_PACKAGES = (
    "ip2p-bench", "torch", "torchvision", "diffusers", "transformers", "open_clip_torch", "lpips",
    "torchmetrics", "accelerate", "numpy", "pandas", "pyarrow", "pillow", "matplotlib", "pydantic",
)


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    if out.get("ip2p-bench") is None:  # running from a checkout that is not pip-installed
        import ip2p

        out["ip2p-bench"] = f"{ip2p.__version__} (source checkout)"
    return out


def git_state(path: str | os.PathLike | None = None) -> dict[str, object]:
    """Commit of the code that ran, and whether the working tree had local changes."""
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty if commit else None}


def hardware() -> dict[str, object]:
    import torch

    info: dict[str, object] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "gpus": [],
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


__all__ = ["package_versions", "git_state", "hardware", "now_iso"]
