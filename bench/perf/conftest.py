"""Set-up of the perf suites, as tests/conftest.py does for the tests: single-threaded torch
(the CI machine has 2 cores for 2 workers), offline Hugging Face hub."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

if not torch.cuda.is_available():  # GPU suites keep torch's own thread count for host work
    torch.set_num_threads(1)
