# The two commands a fresh clone needs: `make demo` and `make test`. Only Python 3.11+ required.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint install clean

install: $(STAMP)

# Re-install only when the package metadata or the pins change (a no-op otherwise).
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "shoggoth needs Python >= 3.11, found " + sys.version.split()[0])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: this pin resolves to the local CPU build instead of the CUDA wheels.
	$(BIN)/python -m pip install -c constraints.txt "torch==2.13.0"
	$(BIN)/python -m pip install -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# Until `shoggoth demo` exists: the most complete pipeline so far (model table, a measured prompt).
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/shoggoth models
	HF_HUB_OFFLINE=1 $(BIN)/shoggoth prompt --model minilm \
		--system "You are a pirate." --user "What is rain?" \
		--continuation "Rain is water that falls from clouds."

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
