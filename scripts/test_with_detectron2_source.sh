#!/usr/bin/env bash
# Build a full, compiled Detectron2 from a source tree or archive in a fresh virtual
# environment, install fcos_d2 into it the way a user would, and run the test suite there.
#
#   scripts/test_with_detectron2_source.sh PATH [pytest args...]
#
# PATH: a Detectron2 source tree (with setup.py) or a .tar.gz of one (e.g. a `git archive`,
# such as ../shared/third_party/detectron2-main-02b5c4e.tar.gz).
#
# Steps, each logged with its duration:
#   1. a virtual environment at $VENV (default build/detectron2-source-env, git-ignored) with
#      requirements.txt (the pinned torch, numpy, ...), wheel and ninja;
#   2. Detectron2 built with its C++ ops: `pip install --no-build-isolation --no-deps` on a
#      copy of the source (skipped when the same source was built there before);
#   3. `pip install -e .` of fcos_d2, dependencies resolved from setup.py (not --no-deps);
#   4. from another folder: `import fcos_d2` and one training step of the demo FCOS;
#   5. pytest on tests/ (tests of the pure-Python Detectron2 layer skip, with the reason).
#
# Environment: VENV=path, FRESH=1 (recreate the environment), SKIP_TESTS=1 (stop after 4),
# MAX_JOBS (parallel compile jobs, default: all cores).
# Not part of `make test`/.ci/run: it needs the Detectron2 source and about 10 minutes on
# 2 cores before the tests start.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { echo "[test_with_detectron2_source] $*"; }

if [[ $# -lt 1 ]]; then
    echo "usage: $0 PATH-TO-DETECTRON2-SOURCE-TREE-OR-TAR.GZ [pytest args...]" >&2
    exit 2
fi
SRC_IN="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
shift
if [[ -d "$SRC_IN" ]]; then
    [[ -f "$SRC_IN/setup.py" ]] || { echo "$SRC_IN: no setup.py, not a Detectron2 source tree" >&2; exit 2; }
    src_id="$(cd "$SRC_IN" && find . -path ./build -prune -o -type f \( -name '*.py' -o -name '*.cpp' -o -name '*.cu' -o -name '*.h' \) -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"
elif [[ -f "$SRC_IN" && "$SRC_IN" == *.tar.gz ]]; then
    src_id="$(sha256sum "$SRC_IN" | cut -c1-16)"
else
    echo "$SRC_IN: neither a source folder nor a .tar.gz" >&2
    exit 2
fi

VENV="${VENV:-$ROOT/build/detectron2-source-env}"
mkdir -p "$(dirname "$VENV")"
VENV="$(cd "$(dirname "$VENV")" && pwd)/$(basename "$VENV")"
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
SECONDS=0
step_start=0
step() { log "$1 (at ${SECONDS}s)"; step_start=$SECONDS; }
took() { log "  took $((SECONDS - step_start))s"; }

# 1. environment --------------------------------------------------------------------------
step "1/5 virtual environment $VENV"
if [[ "${FRESH:-0}" == 1 ]]; then
    rm -rf "$VENV"
fi
[[ -x "$PY" ]] || python3 -m venv "$VENV"
"${PIP[@]}" install --progress-bar off -q -r "$ROOT/requirements.txt" wheel ninja
took

# 2. Detectron2 with its C++ ops ----------------------------------------------------------
step "2/5 Detectron2 from $SRC_IN"
stamp="$VENV/.detectron2_source_id"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$src_id" ]] && (cd / && "$PY" -c "import detectron2._C") 2>/dev/null; then
    log "  already built from this source ($src_id)"
else
    work="$VENV/detectron2-src"
    rm -rf "$work" && mkdir -p "$work"
    if [[ -d "$SRC_IN" ]]; then
        cp -r "$SRC_IN/." "$work/"
        rm -rf "$work/build"
    else
        tar -xzf "$SRC_IN" -C "$work"
        top=("$work"/*)
        if [[ ${#top[@]} -eq 1 && -f "${top[0]}/setup.py" ]]; then work="${top[0]}"; fi
    fi
    [[ -f "$work/setup.py" ]] || { echo "no setup.py in $SRC_IN" >&2; exit 2; }
    build_start=$SECONDS
    (cd "$work" && MAX_JOBS="${MAX_JOBS:-$(nproc)}" "${PIP[@]}" install --progress-bar off \
        --no-build-isolation --no-deps .)
    log "  compiled Detectron2 built and installed in $((SECONDS - build_start))s on $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p'))"
    echo "$src_id" >"$stamp"
fi
(cd / && "$PY" - <<'EOF'
import importlib.machinery, importlib.util
import detectron2
origin = importlib.util.find_spec("detectron2._C").origin
assert origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), origin
print(f"[test_with_detectron2_source]   detectron2 {detectron2.__version__}, compiled ops: {origin}")
EOF
)
took

# 3. fcos_d2 as a user installs it ----------------------------------------------------------
step "3/5 pip install -e $ROOT (dependencies from setup.py)"
"${PIP[@]}" install --progress-bar off -q --no-build-isolation -e "$ROOT"
took

# 4. import and one training step from elsewhere ---------------------------------------------
step "4/5 import fcos_d2 and one training step"
(cd "$(mktemp -d)" && "$PY" - "$ROOT" <<'EOF'
import os, sys
import torch
from detectron2.modeling import build_model  # Detectron2 first, as tutorials do
from detectron2.structures import Boxes, Instances
import fcos_d2
from fcos_d2 import compat

assert compat.compiled_ops_available() and not compat.pure_python_detectron2()
cfg = fcos_d2.setup_cfg(os.path.join(sys.argv[1], "configs/FCOS-Demo/fcos_R_18_demo.yaml"),
                        ["MODEL.DEVICE", "cpu"])
torch.manual_seed(0)
model = build_model(cfg).train()
inst = Instances((128, 160))
inst.gt_boxes = Boxes(torch.tensor([[20.0, 30.0, 90.0, 110.0]]))
inst.gt_classes = torch.tensor([1])
batch = [{"image": torch.rand(3, 128, 160) * 255, "instances": inst}]
opt = torch.optim.SGD(model.parameters(), lr=0.01)
losses = model(batch)
sum(losses.values()).backward()
opt.step()
print("[test_with_detectron2_source]   one step:",
      {k: round(float(v), 4) for k, v in losses.items()}, "from", fcos_d2.__file__)
assert all(torch.isfinite(v) for v in losses.values())
EOF
)
took

# 5. the test suite -----------------------------------------------------------------------
if [[ "${SKIP_TESTS:-0}" == 1 ]]; then
    log "SKIP_TESTS=1: not running the suite"
    exit 0
fi
step "5/5 pytest tests/ with the compiled Detectron2"
cd "$ROOT"
set +e
"$PY" -m pytest -q -rs tests "$@"
rc=$?
set -e
took
log "done in ${SECONDS}s (pytest exit status $rc)"
exit $rc
