#!/usr/bin/env python
"""Install a pure-Python Detectron2 v0.6 into the running interpreter.

Detectron2 is not published on PyPI under its own name.  ``pb1-detectron2==0.6`` is an
sdist whose Python sources are those of the official v0.6 release, but it lacks the C++/CUDA
sources, so its normal build fails.  This script:

1. does nothing if ``import detectron2`` already works (an official build, a conda package,
   an earlier run of this script ...);
2. otherwise downloads the sdist (cached under ``~/.cache/fcos_d2/``, sha256-verified),
3. extracts it to a temporary directory and patches its ``setup.py`` so that no C++
   extension is built and no (outdated, hard-pinned) dependency is requested,
4. runs ``pip install --no-deps --no-build-isolation`` on it with this interpreter.

The missing compiled ops are handled at run time by :mod:`fcos_d2.compat`.  The
dependencies are listed in the repository's ``requirements.txt``.

Usage::

    python tools/install_detectron2.py            # idempotent
    python tools/install_detectron2.py --force    # reinstall even if detectron2 imports
"""
import argparse
import hashlib
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
CACHE_DIR = os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "fcos_d2"
)


def log(msg: str) -> None:
    print(f"[install_detectron2] {msg}", flush=True)


def detectron2_importable() -> bool:
    """Whether ``import detectron2`` works in a fresh copy of this interpreter.

    A subprocess is used so that a stale, half-imported module in this process (or the
    current working directory on ``sys.path``) cannot give a wrong answer.
    """
    probe = "import detectron2, sys; sys.stdout.write(detectron2.__file__ or '')"
    res = subprocess.run(
        [sys.executable, "-c", probe],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=tempfile.gettempdir(),
        text=True,
    )
    if res.returncode == 0:
        log(f"detectron2 imports from {res.stdout.strip()}")
        return True
    return False


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


def _sub_once(pattern: str, repl: str, text: str, what: str) -> str:
    new, n = re.subn(pattern, repl, text, count=1, flags=re.S | re.M)
    if n != 1:
        raise SystemExit(f"could not patch setup.py ({what}): pattern not found")
    return new


def patch_setup_py(src: str) -> None:
    """Build no C++ extension, request no dependency, ship the model-zoo configs."""
    path = os.path.join(src, "setup.py")
    with open(path) as f:
        text = f.read()
    text = _sub_once(r"^\s*ext_modules=get_extensions\(\),\s*$", "    ext_modules=[],", text,
                     "ext_modules")
    text = _sub_once(r"^\s*cmdclass=\{[^}]*\},\s*$", "", text, "cmdclass")
    text = _sub_once(r"install_requires=\[.*?\n    \],", "install_requires=[],", text,
                     "install_requires")
    # The sdist has the model-zoo configs inside the package but no top-level configs/,
    # so get_model_zoo_configs() finds nothing: list them relative to the package.
    text = _sub_once(
        r'package_data=\{"detectron2.model_zoo": get_model_zoo_configs\(\)\},',
        'package_data={"detectron2.model_zoo": ["configs/*.yaml", "configs/**/*.yaml", '
        '"configs/**/*.py"]},',
        text,
        "package_data",
    )
    with open(path, "w") as f:
        f.write(text)
    log("patched setup.py: ext_modules=[], no BuildExtension cmdclass, install_requires=[]")


def pip_install(src: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", src]
    log("running: " + " ".join(cmd))
    subprocess.run(cmd, check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="reinstall even if detectron2 imports")
    args = parser.parse_args(argv)

    if not args.force and detectron2_importable():
        log("leaving the existing Detectron2 alone")
        return 0

    log(f"installing pure-Python Detectron2 v0.6 into {sys.executable}")
    sdist = fetch_sdist()
    with tempfile.TemporaryDirectory(prefix="fcos_d2_detectron2_") as workdir:
        src = extract(sdist, workdir)
        patch_setup_py(src)
        pip_install(src)

    if not detectron2_importable():
        raise SystemExit("detectron2 still does not import after installation")
    log("done (compiled ops are absent: fcos_d2.compat.apply() provides fallbacks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
