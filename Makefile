# Every target sets itself up on a fresh machine: a virtual environment, torch and torchvision
# as a matching pair from the registry (never the on-disk CPU wheel, which PyPI's torchvision
# cannot load), then this package with its test extras.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ip2p-installed

# Idle OpenMP threads yield the CPU instead of spinning (a 2-core machine runs 2 test workers).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test setup clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || \
	  $(BIN)/python -m pip install -q torch torchvision
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/ip2p demo --out reports/demo

test: $(STAMP)
	bash scripts/test-deps.sh
	$(BIN)/python -m pytest -n 2 -q

clean-venv:
	rm -rf $(VENV)
