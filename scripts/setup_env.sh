#!/usr/bin/env bash
# Set up the Python environment of fcos_d2:
#   1. create the virtual environment .venv (python3 -m venv) if it is missing,
#   2. pip install -r requirements.txt,
#   3. install a pure-Python Detectron2 v0.6 with fcos_d2's reviewed fixes
#      (tools/install_detectron2.py and tools/detectron2_pure_python/; a compiled Detectron2
#      is left alone, an older install of this script is replaced),
#   4. pip install -e . (fcos_d2 itself, editable).
#
# Idempotent.  A second run is fast: steps 2-4 are skipped while a stamp file matches the
# sha256 of requirements.txt (and of setup.py, tools/install_detectron2.py and
# tools/detectron2_pure_python/*) and the
# packages are still found.
#
# Environment:
#   PYTHON=python   install into that interpreter's environment instead of .venv
#   VENV=path       where to create the virtual environment (default: .venv)
#   FORCE=1         ignore the stamp and run every step
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { echo "[setup_env] $*"; }

if [[ -n "${PYTHON:-}" ]]; then
    PY="$(command -v "$PYTHON" || true)"
    if [[ -z "$PY" ]]; then
        echo "[setup_env] PYTHON=$PYTHON: no such interpreter" >&2
        exit 1
    fi
    PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute
    prefix="$("$PY" -c 'import sys; print(sys.prefix)')"
    key="$(printf '%s\n%s\n' "$PY" "$prefix" | sha256sum | cut -c1-16)"
    STAMP_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/fcos_d2/stamps"
    STAMP="$STAMP_DIR/setup-$key"
    log "using interpreter $PY (environment $prefix)"
else
    VENV="${VENV:-.venv}"
    if [[ ! -x "$VENV/bin/python" ]]; then
        log "creating virtual environment $VENV"
        python3 -m venv "$VENV"
    fi
    PY="$(cd "$VENV" && pwd)/bin/python"
    STAMP_DIR="$VENV"
    STAMP="$VENV/.fcos_d2_setup.sha256"
fi

# What the stamp records: the inputs of steps 2-4, and where fcos_d2 is installed from.
inputs=(requirements.txt tools/install_detectron2.py tools/detectron2_pure_python/*)
for f in setup.py setup.cfg pyproject.toml; do
    [[ -f "$f" ]] && inputs+=("$f")
done
want="$(cat "${inputs[@]}" | sha256sum | cut -d' ' -f1) $ROOT"

# Cheap check (no heavy import) that what was installed is still there.
installed_ok() {
    (cd / && "$PY" - "$ROOT" <<'EOF'
import importlib.util, os, sys
root = sys.argv[1]
for name in ("torch", "torchvision", "detectron2", "detectron2._C", "fvcore", "pycocotools", "pytest"):
    if importlib.util.find_spec(name) is None:
        sys.exit(1)
if os.path.exists(os.path.join(root, "setup.py")) or os.path.exists(os.path.join(root, "pyproject.toml")):
    spec = importlib.util.find_spec("fcos_d2")
    if spec is None or os.path.realpath(os.path.dirname(spec.origin)) != os.path.realpath(os.path.join(root, "fcos_d2")):
        sys.exit(1)
EOF
    ) >/dev/null 2>&1
}

if [[ "${FORCE:-0}" != 1 && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && installed_ok; then
    log "environment up to date (stamp $STAMP)"
    exit 0
fi

PIP=("$PY" -m pip --disable-pip-version-check)
log "installing requirements.txt"
"${PIP[@]}" install --progress-bar off -r requirements.txt

log "installing Detectron2"
"$PY" tools/install_detectron2.py

if [[ -f setup.py || -f pyproject.toml ]]; then
    log "installing fcos_d2 (editable)"
    # Dependencies come from requirements.txt (Detectron2 is installed under another name).
    "${PIP[@]}" install --progress-bar off --no-deps --no-build-isolation -e .
else
    log "WARNING: no setup.py/pyproject.toml: fcos_d2 is not installed (run from the repo root)"
fi

mkdir -p "$STAMP_DIR"
echo "$want" >"$STAMP"
log "done: $PY"
