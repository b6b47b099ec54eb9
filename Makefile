# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo demo-down test lint format clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# stack (S3, MLflow, Triton) + quick pipeline + gate/registry + serve + gRPC streams + dashboard
demo: $(STAMP)
	$(BIN)/mouthmap demo

demo-down:  # stop the dashboard and the whole local stack that `make demo` started
	@if [ -x $(BIN)/mouthmap ]; then $(BIN)/mouthmap demo down; else echo "nothing was installed"; fi

test: $(STAMP)
	bash scripts/install_browser.sh  # Debian chromium for the browser test (no-op when present)
	$(BIN)/ruff check src tests components pipelines dashboard
	$(BIN)/python -m pytest -q --timeout=900 --durations=15  # the slowest, to keep CI short

lint: $(STAMP)
	$(BIN)/ruff check src tests components pipelines dashboard
	$(BIN)/ruff format --check src tests components pipelines dashboard

format: $(STAMP)
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

clean:
	rm -rf $(VENV) .mouthmap build *.egg-info
