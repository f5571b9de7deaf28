#!/usr/bin/env python
"""Install a pure-Python Detectron2 v0.6, fixed for today's libraries, into this interpreter.

Detectron2 is not published on PyPI under its own name.  ``pb1-detectron2==0.6`` is an
sdist whose Python sources are those of the official v0.6 release, without the C++/CUDA
sources.  This script:

1. looks at the installed Detectron2 (in a subprocess) and leaves it alone when it is a
   compiled build (``detectron2._C`` is an extension module) or already this script's
   install at the current patch revision;
2. otherwise downloads the sdist (cached under ``~/.cache/fcos_d2/``, sha256-verified),
3. extracts it, applies ``tools/detectron2_pure_python/detectron2-0.6.patch`` (read it: a
   short list of fixes for numpy >= 1.24, Pillow >= 10, the missing C++ ops, and a
   ``setup.py`` that builds no extension) and copies
   ``tools/detectron2_pure_python/_C.py`` to ``detectron2/_C.py``,
4. runs ``pip install --no-deps --no-build-isolation`` on it with this interpreter.

So the installed Detectron2 works on its own, whatever is imported first; fcos_d2 patches
nothing at import time.  The dependencies are listed in the repository's
``requirements.txt``.

Usage::

    python tools/install_detectron2.py            # idempotent
    python tools/install_detectron2.py --force    # reinstall whatever is installed
    python tools/install_detectron2.py --wheel-dir .whl   # build the patched wheel only

``--wheel-dir`` installs nothing: it writes the patched sources as a pure-Python wheel
(``pb1_detectron2-0.6-py3-none-any.whl``) into that folder, for a machine that cannot
reach PyPI (scripts/device_wheels.sh).
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request

SDIST_NAME = "pb1-detectron2-0.6.tar.gz"
SDIST_URL = (
    "https://files.pythonhosted.org/packages/60/26/"
    "48f5bbb7ee492696a21da23303daeecdfe3942c498a70d34108acf63b2bd/" + SDIST_NAME
)
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
DIST_NAME = "pb1-detectron2"
CACHE_DIR = os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "fcos_d2"
)
PATCH_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "detectron2_pure_python")
PATCH_FILE = os.path.join(PATCH_DIR, "detectron2-0.6.patch")
C_MODULE = os.path.join(PATCH_DIR, "_C.py")


def log(msg: str) -> None:
    print(f"[install_detectron2] {msg}", flush=True)


def patch_revision(c_module_source: str):
    """The ``FCOS_D2_PATCH = "..."`` value in a ``_C.py`` source, or None."""
    m = re.search(r'^FCOS_D2_PATCH = "([^"]+)"$', c_module_source, flags=re.M)
    return m.group(1) if m else None


# What is installed, probed in a fresh interpreter so that a half-imported module in this
# process (or the current directory on sys.path) cannot give a wrong answer.
_PROBE = r"""
import importlib.metadata, importlib.util, json
out = {"detectron2": None, "c_origin": None, "dist": None}
spec = importlib.util.find_spec("detectron2")
if spec is not None:
    out["detectron2"] = spec.origin
    c = importlib.util.find_spec("detectron2._C")
    out["c_origin"] = c.origin if c is not None else None
    try:  # the pb1-detectron2 distribution, if it is the one that holds this detectron2
        dist = importlib.metadata.distribution("%s")
        if str(dist.locate_file("detectron2/__init__.py")) == spec.origin:
            out["dist"] = dist.version
    except importlib.metadata.PackageNotFoundError:
        pass
print(json.dumps(out))
""" % DIST_NAME


def installed_state():
    """One of "absent", "compiled", "current", "outdated", "foreign"; and the probe dict.

    "outdated": a pure-Python ``pb1-detectron2`` from this script, at another (or no)
    patch revision.  "foreign": a Detectron2 without compiled ops that this script did not
    install.
    """
    res = subprocess.run(
        [sys.executable, "-c", _PROBE], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=tempfile.gettempdir(), text=True,
    )  # fmt: skip
    if res.returncode != 0:
        log("probing the installed Detectron2 failed:\n" + res.stderr.strip())
        return "foreign", {}
    info = json.loads(res.stdout.strip().splitlines()[-1])
    if info["detectron2"] is None:
        return "absent", info
    origin = info["c_origin"]
    if origin is not None and not origin.endswith(".py"):
        return "compiled", info
    if origin is not None:
        with open(origin) as f:
            revision = patch_revision(f.read())
        with open(C_MODULE) as f:
            wanted = patch_revision(f.read())
        if revision == wanted:
            return "current", info
        return ("outdated" if revision is not None else "foreign"), info
    return ("outdated" if info["dist"] is not None else "foreign"), info


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_sdist() -> str:
    """Return the path of the verified sdist, downloading it into the cache if needed."""
    os.makedirs(CACHE_DIR, exist_ok=True)
    dest = os.path.join(CACHE_DIR, SDIST_NAME)
    if os.path.exists(dest):
        if sha256_of(dest) == SDIST_SHA256:
            log(f"using cached sdist {dest}")
            return dest
        log(f"cached {dest} has a wrong sha256: downloading it again")
        os.remove(dest)
    log(f"downloading {SDIST_URL}")
    tmp = dest + ".part"
    last_err = None
    for attempt in range(1, 4):
        try:
            with urllib.request.urlopen(SDIST_URL, timeout=120) as resp, open(tmp, "wb") as out:
                shutil.copyfileobj(resp, out)
            break
        except OSError as e:  # URLError is an OSError
            last_err = e
            log(f"download attempt {attempt} failed: {e}")
    else:
        raise SystemExit(f"could not download {SDIST_URL}: {last_err}")
    digest = sha256_of(tmp)
    if digest != SDIST_SHA256:
        os.remove(tmp)
        raise SystemExit(f"sha256 mismatch for {SDIST_NAME}: got {digest}, expected {SDIST_SHA256}")
    os.replace(tmp, dest)
    log(f"sha256 verified, cached at {dest}")
    return dest


def extract(sdist: str, workdir: str) -> str:
    with tarfile.open(sdist, "r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(workdir, filter="data")
        else:  # pragma: no cover - old Pythons without extraction filters
            tar.extractall(workdir)
    roots = [d for d in os.listdir(workdir) if os.path.isdir(os.path.join(workdir, d))]
    if len(roots) != 1:
        raise SystemExit(f"unexpected sdist layout: {roots}")
    src = os.path.join(workdir, roots[0])
    log(f"extracted to {src}")
    return src


# ---------------------------------------------------------------------------------------
# unified diffs (no `patch` program needed; no fuzz: every hunk must match exactly)
# ---------------------------------------------------------------------------------------

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def parse_unified_diff(text: str):
    """``[(path, [(old_start, old_lines, new_lines), ...]), ...]`` of a ``-p1`` diff.

    Text before the first ``---`` line (a description) is ignored.
    """
    files = []
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        if not (lines[i].startswith("--- ") and i + 1 < len(lines)
                and lines[i + 1].startswith("+++ ")):  # fmt: skip
            i += 1
            continue
        path = lines[i + 1][4:].strip().split("/", 1)[1]
        hunks = []
        i += 2
        while i < len(lines) and lines[i].startswith("@@"):
            m = _HUNK.match(lines[i])
            if m is None:
                raise ValueError(f"{path}: malformed hunk header {lines[i]!r}")
            old_start = int(m.group(1))
            n_old = int(m.group(2) if m.group(2) is not None else 1)
            n_new = int(m.group(4) if m.group(4) is not None else 1)
            old, new = [], []
            i += 1
            while len(old) < n_old or len(new) < n_new:
                tag, body = lines[i][:1], lines[i][1:]
                if tag in (" ", "\n"):
                    body = body if tag == " " else "\n"
                    old.append(body)
                    new.append(body)
                elif tag == "-":
                    old.append(body)
                elif tag == "+":
                    new.append(body)
                else:
                    raise ValueError(f"{path}: unexpected line in a hunk: {lines[i]!r}")
                i += 1
            hunks.append((old_start, old, new))
        files.append((path, hunks))
    return files


def apply_unified_diff(text: str, root: str) -> None:
    """Apply a ``-p1`` unified diff to the tree at ``root``; a mismatch is an error."""
    for path, hunks in parse_unified_diff(text):
        full = os.path.join(root, path)
        if os.path.exists(full):
            with open(full) as f:
                lines = f.readlines()
        else:
            lines = []
        shift = 0  # lines added minus lines removed by the previous hunks
        for old_start, old, new in hunks:
            at = max(old_start - 1, 0) + shift
            if lines[at:at + len(old)] != old:
                raise SystemExit(
                    f"patch does not apply: {path}, hunk at line {old_start} does not match "
                    "(is this the pb1-detectron2 0.6 sdist?)"
                )
            lines[at:at + len(old)] = new
            shift += len(new) - len(old)
        with open(full, "w") as f:
            f.writelines(lines)
        log(f"patched {path} ({len(hunks)} hunk(s))")


def patch_sources(src: str) -> None:
    with open(PATCH_FILE) as f:
        apply_unified_diff(f.read(), src)
    shutil.copyfile(C_MODULE, os.path.join(src, "detectron2", "_C.py"))
    log("added detectron2/_C.py (pure Python: torchvision deformable conv, clear errors)")


def pip(command: str, *args: str) -> None:
    """``pip COMMAND --no-deps --no-build-isolation ARGS`` with this interpreter."""
    cmd = [sys.executable, "-m", "pip", command, "--no-deps", "--no-build-isolation", *args]
    log("running: " + " ".join(cmd))
    subprocess.run(cmd, check=True)


def patched_sources(workdir: str) -> str:
    """The sdist (downloaded or cached) extracted into ``workdir`` and patched: its root."""
    src = extract(fetch_sdist(), workdir)
    patch_sources(src)
    return src


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="reinstall whatever is installed")
    parser.add_argument(
        "--wheel-dir", metavar="DIR",
        help="install nothing: write the patched Detectron2 as a wheel into DIR",
    )
    args = parser.parse_args(argv)

    if args.wheel_dir:
        os.makedirs(args.wheel_dir, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="fcos_d2_detectron2_") as workdir:
            pip("wheel", "--wheel-dir", os.path.abspath(args.wheel_dir), patched_sources(workdir))
        log(f"wheel written to {args.wheel_dir}")
        return 0

    state, info = installed_state()
    if info.get("detectron2"):
        log(f"detectron2 at {info['detectron2']}: {state}")
    if not args.force:
        if state in ("compiled", "current"):
            log("leaving the installed Detectron2 alone")
            return 0
        if state == "foreign":
            raise SystemExit(
                "[install_detectron2] the installed Detectron2 has no compiled ops and was not "
                "installed by this script: uninstall it, install a compiled Detectron2, or "
                "rerun with --force to replace it"
            )

    log(f"installing pure-Python Detectron2 v0.6 into {sys.executable}")
    with tempfile.TemporaryDirectory(prefix="fcos_d2_detectron2_") as workdir:
        pip("install", patched_sources(workdir))

    state, _ = installed_state()
    if state != "current":
        raise SystemExit(f"the installed Detectron2 is {state!r} after installation")
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
