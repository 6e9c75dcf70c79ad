"""Where a result was made, for every record of the project (a run's manifest, a golden file, a
profile): package versions, the git commit of the code, the host's hardware, one torch device, the
runtime versions an edit runs on, and the time. The one place these facts are read."""
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


def device_info(device) -> dict[str, object]:
    """One torch device as a record names it: a GPU's name, compute capability, multiprocessors,
    memory, CUDA and cuDNN versions and TF32 settings; the CPU's name, torch threads and cores."""
    import torch

    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": p.name, "capability": f"{p.major}.{p.minor}",
                "multiprocessors": p.multi_processor_count, "memory_bytes": int(p.total_memory),
                "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32}
    return {"type": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count()}


def runtime_versions() -> dict[str, object]:
    """The versions an edit runs on (Python, torch, diffusers, transformers, ip2p; triton, None when
    absent) and the code's ``git_state``. A copied working tree without ``.git`` (e.g. on a device
    machine) has its commit named by the caller in ``$IP2P_GIT_COMMIT``."""
    import diffusers
    import torch
    import transformers

    import ip2p

    out: dict[str, object] = {"python": platform.python_version(), "torch": torch.__version__,
                              "diffusers": diffusers.__version__, "transformers": transformers.__version__,
                              "ip2p": ip2p.__version__}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    try:
        out["git"] = git_state()
    except Exception as e:  # a copy without git metadata still records its versions
        out["git"] = {"commit": None, "error": f"{type(e).__name__}: {e}"}
    if not out["git"].get("commit") and os.environ.get("IP2P_GIT_COMMIT"):
        out["git"] = {"commit": os.environ["IP2P_GIT_COMMIT"], "dirty": None, "source": "$IP2P_GIT_COMMIT"}
    return out


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


__all__ = ["package_versions", "git_state", "hardware", "device_info", "runtime_versions", "now_iso"]
