# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

LOCK   := requirements/lock.txt requirements/torch-cpu.txt
# TORCH=cu128 (a CUDA variant of PyTorch's index) installs a CUDA build instead: see the README
TORCH  ?= cpu

.PHONY: install lock upgrade images demo demo-down test lint format clean

# exactly the locked files (hash-checked, no resolving): scripts/deps.py
$(STAMP): pyproject.toml $(LOCK)
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PYTHON) scripts/deps.py install $(BIN)/python --torch $(TORCH)
	touch $(STAMP)

install: $(STAMP)

lock: $(STAMP)  # re-resolve after editing pyproject.toml's dependencies (keeps other pins)
	$(BIN)/python scripts/deps.py lock

upgrade: $(STAMP)  # newest allowed versions; kept only if `make test` passes on them
	$(BIN)/python scripts/deps.py upgrade

images: $(STAMP)  # pipeline, proxy and triton-cpu images (Docker: scripts/docker.sh up starts one)
	$(BIN)/mouthmap images build

# stack (S3, MLflow, Triton) + quick pipeline + gate/registry + serve + gRPC streams + dashboard
demo: $(STAMP)
	$(BIN)/mouthmap demo

demo-down:  # stop the dashboard and the whole local stack that `make demo` started
	@if [ -x $(BIN)/mouthmap ]; then $(BIN)/mouthmap demo down; else echo "nothing was installed"; fi

test: $(STAMP)
	$(BIN)/python scripts/deps.py check  # the lock agrees with pyproject.toml
	bash scripts/install_browser.sh  # Debian chromium for the browser test (no-op when present)
	$(BIN)/ruff check src tests components pipelines dashboard scripts
	$(BIN)/python -m pytest -q --timeout=900 --durations=15  # the slowest, to keep CI short

lint: $(STAMP)
	$(BIN)/ruff check src tests components pipelines dashboard
	$(BIN)/ruff format --check src tests components pipelines dashboard

format: $(STAMP)
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

clean:
	rm -rf $(VENV) .mouthmap build *.egg-info
