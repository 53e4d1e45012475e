# The two commands of the README. Both build .venv from scratch when it is missing.
# `make test` lints first (ruff: undefined/unused names and syntax errors, config in pyproject.toml), then runs pytest.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test venv data clean

demo: $(STAMP) data
	$(BIN)/priorshift demo

test: $(STAMP) data
	$(BIN)/ruff check src tests benchmarks examples scripts
	$(BIN)/python -m pytest -q

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The local CPU wheel of torch: quick, small, no CUDA.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[data,diffusers,test]"
	touch $(STAMP)

# Fashion-MNIST comes from Debian's dataset-fashion-mnist; install it when we can (root + apt).
data:
	@bash scripts/install-data.sh

clean:
	rm -rf $(VENV)
