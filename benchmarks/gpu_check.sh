#!/usr/bin/env bash
# The GPU path, measured in one script on a bare CUDA machine (PyTorch and transformers
# installed, nothing reachable), within 8 minutes:
#   1. the packages shoggoth's model code needs and the machine lacks, from the carried wheel
#      folder .gpu-wheels/ (made here by `make gpu-wheels`; no index is contacted);
#   2. benchmarks/gpu_throughput.py: harvest vs the bare forward (bf16) and SAE training, on
#      random-weight Qwen2-0.5B- and Llama-1B-shaped models;
#   3. the test suite's CUDA tests (tests/sae/test_models.py -k cuda).
# Figures go to stdout and, when $OUT is set, to $OUT/gpu_throughput.json.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device visible to PyTorch; nothing measured" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
missing=$("$PY" - <<'PY'
import importlib.util
need = {"sae_lens": "sae-lens", "transformer_lens": "transformer-lens", "jaxtyping": "jaxtyping",
        "einops": "einops", "simple_parsing": "simple-parsing", "rich": "rich", "yaml": "pyyaml",
        "click": "click"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
PY
)
if [ -n "$missing" ]; then
    if [ ! -d .gpu-wheels ]; then
        echo "gpu_check: missing $missing and no .gpu-wheels folder; run 'make gpu-wheels' and carry it" >&2
        exit 2
    fi
    echo "installing from .gpu-wheels: $missing"
    "$PY" -m pip install -q --no-index --no-deps --find-links .gpu-wheels $missing || exit 2
fi
# What the image lacks beyond the carried wheels (datasets, pandas, … on a very bare image):
# named in one line rather than as a traceback halfway through.
if ! err=$("$PY" -c 'import sae_lens, transformer_lens' 2>&1); then
    echo "gpu_check: cannot import sae-lens/transformer-lens here: $(echo "$err" | tail -1)" >&2
    exit 2
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=.
timeout 400 "$PY" -m benchmarks.gpu_throughput --steps 50
status=$?
timeout 60 "$PY" -m pytest -q -p no:cacheprovider tests/sae/test_models.py -k cuda || status=$?
exit $status
