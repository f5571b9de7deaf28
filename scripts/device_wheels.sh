#!/usr/bin/env bash
# Write into .whl/ (ignored by git) the wheels that a machine with PyTorch but without
# Detectron2, and without access to PyPI, needs to run fcos_d2's tests, demo and
# benchmarks: the patched pure-Python Detectron2 v0.6 (tools/install_detectron2.py
# --wheel-dir) and its dependencies that such an image usually lacks, at the versions of
# requirements.txt. scripts/cuda_check.sh installs them there with
#   python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl
#
# Environment:
#   PYVER=3.12   the target machine's Python version (wheels with compiled code)
#   WHL=.whl     where the wheels go (emptied first)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-.venv/bin/python}"
PYVER="${PYVER:-3.12}"
WHL="${WHL:-.whl}"

log() { echo "[device_wheels] $*"; }

# The version requirements.txt pins for a package.
pinned() {
    local spec
    spec="$(grep -iE "^$1==" requirements.txt | sed 's/ *#.*//')"
    [[ -n "$spec" ]] || { echo "[device_wheels] $1 is not pinned in requirements.txt" >&2; exit 1; }
    echo "$spec"
}

rm -rf "$WHL"
mkdir -p "$WHL"
log "1/3 wheels from PyPI for Python $PYVER (manylinux x86_64)"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$WHL" \
    "$(pinned pycocotools)" "$(pinned iopath)" "$(pinned yacs)" "$(pinned omegaconf)" \
    "$(pinned hydra-core)" "$(pinned termcolor)" "setuptools<81"
log "2/3 pure-Python wheels built from sdists (fvcore; antlr4, which hydra-core needs)"
"$PY" -m pip wheel -q --no-deps -w "$WHL" "$(pinned fvcore)" "antlr4-python3-runtime==4.9.3"
log "3/3 the patched pure-Python Detectron2"
"$PY" tools/install_detectron2.py --wheel-dir "$WHL"
log "done: $(ls "$WHL" | wc -l) wheels, $(du -sh "$WHL" | cut -f1) in $WHL"
ls "$WHL"
