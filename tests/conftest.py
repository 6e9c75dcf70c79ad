"""Shared test set-up: single-threaded torch (the machine has 2 cores for 2 workers)."""
import os

# Idle OpenMP threads must not spin: two pytest workers share two cores (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)
