#!/usr/bin/env bash
# The mixed-precision checks on a CUDA GPU, in one run that fits a short lease of a GPU
# machine which has PyTorch but neither Detectron2 nor network access:
#
#   bash scripts/device_wheels.sh     # on a machine with PyPI: .whl/ (about 3 MB)
#   bash scripts/cuda_check.sh        # on the GPU machine, with .whl/ copied beside it
#
# It installs .whl/ into a folder of its own when Detectron2 is not importable, names the
# GPU and the versions, then runs benchmarks/precision_check.py on CUDA: `pytest -m cuda`,
# the demo in float32 and its weights under float16 TEST.AMP, the demo trained under
# SOLVER.AMP (float16 + GradScaler), the benchmark against torchvision's FCOS and the demo
# recipe's speed -- stages that do not fit BUDGET are skipped and named.
#
# Environment:
#   OUT=dir        where the results go (default output/cuda_check): precision_check.{md,json,log},
#                  benchmark.json, demo_recipe.json
#   BUDGET=480     seconds for all stages
#   DEVICE=cuda    the device of the checks
#   PY=python3     the interpreter that has PyTorch
# Extra arguments go to benchmarks/precision_check.py (e.g. --seeds 7 --skip recipe).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-output/cuda_check}"
BUDGET="${BUDGET:-480}"
DEVICE="${DEVICE:-cuda}"
PY="${PY:-python3}"
SITE="${TMPDIR:-/tmp}/fcos_d2_site"
export PYTHONUNBUFFERED=1

if ! "$PY" -c "import detectron2" 2>/dev/null; then
    if [[ ! -d .whl ]]; then
        echo "[cuda_check] no Detectron2 here and no .whl/: run scripts/device_wheels.sh" >&2
        exit 1
    fi
    echo "[cuda_check] installing .whl/ into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl || exit 1
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

command -v nvidia-smi >/dev/null && nvidia-smi -L
"$PY" -c "import torch, torchvision, detectron2, fcos_d2
print('[cuda_check] torch', torch.__version__, 'torchvision', torchvision.__version__,
      'detectron2', detectron2.__version__, 'CUDA', torch.version.cuda,
      'GPU', torch.cuda.get_device_name() if torch.cuda.is_available() else None)" || exit 1
mkdir -p "$OUT"
exec "$PY" -m benchmarks.precision_check --device "$DEVICE" --budget "$BUDGET" --workers 4 \
    --output "$OUT" --work-dir "${TMPDIR:-/tmp}/fcos_d2_precision_runs" "$@"
