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

DEMO_SAE := runs/sae-minilm-blocks.3.hook_resid_post-topk
DEMO_DB  := runs/demo.duckdb

# Until `shoggoth demo` exists: the most complete pipeline so far. The models table, a measured
# prompt, the default SAE trained offline on MiniLM, the built-in persona battery harvested with
# it into a DuckDB file (each skipped when its output is already there), the feature labels, the
# feature dictionary, and one SQL query.
demo: $(STAMP) $(DEMO_DB)
	HF_HUB_OFFLINE=1 $(BIN)/shoggoth models
	HF_HUB_OFFLINE=1 $(BIN)/shoggoth prompt --model minilm \
		--system "You are a pirate." --user "What is rain?" \
		--continuation "Rain is water that falls from clouds."
	HF_HUB_OFFLINE=1 $(BIN)/shoggoth harvest --db $(DEMO_DB) --sae $(DEMO_SAE)
	HF_HUB_OFFLINE=1 $(BIN)/shoggoth label --db $(DEMO_DB)
	HF_HUB_OFFLINE=1 $(BIN)/shoggoth index --db $(DEMO_DB)
	HF_HUB_OFFLINE=1 $(BIN)/shoggoth sql --db $(DEMO_DB) -- \
		"SELECT label, count(*) AS features FROM features GROUP BY label ORDER BY features DESC"

# An interrupted harvest resumes where it stopped; a retrained SAE is harvested afresh.
$(DEMO_DB): $(DEMO_SAE)/shoggoth.json
	rm -f $(DEMO_DB)
	HF_HUB_OFFLINE=1 $(BIN)/shoggoth harvest --db $(DEMO_DB) --sae $(DEMO_SAE)
	HF_HUB_OFFLINE=1 $(BIN)/shoggoth label --db $(DEMO_DB)
	HF_HUB_OFFLINE=1 $(BIN)/shoggoth index --db $(DEMO_DB)
	HF_HUB_OFFLINE=1 $(BIN)/shoggoth sql --db $(DEMO_DB) -- \
		"SELECT label, count(*) AS features FROM features GROUP BY label ORDER BY features DESC"

# An interrupted demo training resumes from its newest checkpoint.
$(DEMO_SAE)/shoggoth.json: $(STAMP)
	@partial=$(dir $(DEMO_SAE)).$(notdir $(DEMO_SAE)).partial; \
	if ls $$partial/checkpoints/[0-9]* >/dev/null 2>&1; then flag=--resume; \
	elif [ -e $$partial ] || [ -e $(DEMO_SAE) ]; then flag=--overwrite; else flag=; fi; \
	echo "shoggoth train --out $(DEMO_SAE) $$flag"; \
	HF_HUB_OFFLINE=1 $(BIN)/shoggoth train --out $(DEMO_SAE) $$flag

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
