"""tools/install_detectron2.py: its unified-diff applier, the reviewed files of its patch, what
it tells of the installed Detectron2, and the fix ``import fcos_d2`` names without one."""
import os
import textwrap

import pytest

from helpers import REPO, load_script, pure_python_only


@pytest.fixture(scope="module")
def installer():
    return load_script("tools/install_detectron2.py")


_DIFF = textwrap.dedent(
    """\
    A description, ignored.
    --- a/pkg/mod.py
    +++ b/pkg/mod.py
    @@ -1,3 +1,3 @@
     one
    -two
    +TWO
     three
    @@ -6,2 +6,3 @@
     six
    +six and a half
     seven
    """
)


def test_unified_diff_applier_applies_hunks_in_order(installer, tmp_path):
    (tmp_path / "pkg").mkdir()
    words = ["one", "two", "three", "four", "five", "six", "seven"]
    (tmp_path / "pkg" / "mod.py").write_text("\n".join(words) + "\n")
    installer.apply_unified_diff(_DIFF, str(tmp_path))
    assert (tmp_path / "pkg" / "mod.py").read_text().splitlines() == [
        "one", "TWO", "three", "four", "five", "six", "six and a half", "seven",
    ]  # fmt: skip


def test_unified_diff_applier_refuses_a_mismatch(installer, tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("one\nzwei\nthree\nfour\nfive\nsix\nseven\n")
    with pytest.raises(SystemExit, match=r"pkg/mod.py, hunk at line 1 does not match"):
        installer.apply_unified_diff(_DIFF, str(tmp_path))


def test_patch_lists_the_reviewed_files(installer):
    with open(installer.PATCH_FILE) as f:
        files = [path for path, _ in installer.parse_unified_diff(f.read())]
    assert files == [
        "detectron2/data/build.py",
        "detectron2/data/datasets/pascal_voc.py",
        "detectron2/data/transforms/transform.py",
        "detectron2/evaluation/coco_evaluation.py",
        "detectron2/evaluation/pascal_voc_evaluation.py",
        "detectron2/evaluation/sem_seg_evaluation.py",
        "detectron2/layers/deform_conv.py",
        "detectron2/layers/nms.py",
        "detectron2/structures/masks.py",
        "detectron2/utils/comm.py",
        "detectron2/utils/video_visualizer.py",
        "detectron2/utils/visualizer.py",
        "setup.py",
    ]


def _fake_detectron2(root, c_module=None, dist=False):
    """A stand-in ``detectron2`` package under ``root`` (nothing in it is executed but
    its empty ``__init__``); ``c_module``: the file name and text of its ``_C``."""
    pkg = root / "detectron2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    if c_module is not None:
        name, text = c_module
        (pkg / name).write_text(text)
    if dist:
        info = root / "pb1_detectron2-0.6.dist-info"
        info.mkdir()
        metadata = "Metadata-Version: 2.1\nName: pb1-detectron2\nVersion: 0.6\n"
        (info / "METADATA").write_text(metadata)
    return str(root)


@pytest.mark.parametrize(
    "c_module,dist,state",
    [
        (("_C.cpython-311-x86_64-linux-gnu.so", ""), False, "compiled"),
        (("_C.py", 'FCOS_D2_PATCH = "{current}"\n'), True, "current"),
        (("_C.py", 'FCOS_D2_PATCH = "detectron2-0.6-pure-python/0"\n'), True, "outdated"),
        (None, True, "outdated"),  # an install of this script before the patch existed
        (None, False, "foreign"),  # somebody else's Detectron2 without _C: not replaced
    ],
    ids=["compiled", "current", "older-patch", "unpatched", "foreign"],
)
def test_installer_tells_what_is_installed(installer, tmp_path, monkeypatch, c_module, dist, state):
    with open(installer.C_MODULE) as f:
        current = installer.patch_revision(f.read())
    if c_module is not None:
        c_module = (c_module[0], c_module[1].format(current=current))
    monkeypatch.setenv("PYTHONPATH", _fake_detectron2(tmp_path, c_module, dist))
    assert installer.installed_state()[0] == state


def test_import_fcos_d2_names_the_fix_for_a_detectron2_without_c(tmp_path):
    import subprocess
    import sys

    # fcos_d2 from this checkout also where it is not installed (scripts/cuda_check.sh)
    path = os.pathsep.join([_fake_detectron2(tmp_path, None, True), REPO])
    env = dict(os.environ, PYTHONPATH=path)
    res = subprocess.run([sys.executable, "-c", "import fcos_d2"], capture_output=True,
                         text=True, env=env, cwd=str(tmp_path), timeout=300)  # fmt: skip
    assert res.returncode == 1
    assert "has no detectron2._C module" in res.stderr
    assert "tools/install_detectron2.py --force" in res.stderr


@pure_python_only
def test_installed_detectron2_has_the_current_patch(installer):
    state, info = installer.installed_state()
    assert state == "current", info


@pytest.mark.slow
def test_wheel_dir_writes_the_patched_sources_as_a_wheel(installer, tmp_path):
    """``--wheel-dir`` (scripts/device_wheels.sh): a pure-Python wheel holding the patch's
    new lines in every patched file and the pure-Python ``_C`` module; nothing installed."""
    import zipfile

    sdist = os.path.join(installer.CACHE_DIR, installer.SDIST_NAME)
    if not os.path.exists(sdist):
        pytest.skip(f"no cached {sdist} (make setup downloads it)")
    before = installer.installed_state()
    assert installer.main(["--wheel-dir", str(tmp_path)]) == 0
    (wheel,) = os.listdir(tmp_path)
    assert wheel == "pb1_detectron2-0.6-py3-none-any.whl"
    with open(installer.PATCH_FILE) as f:
        patch = installer.parse_unified_diff(f.read())
    with zipfile.ZipFile(tmp_path / wheel) as z:
        for path, hunks in patch:
            if not path.startswith("detectron2/"):
                continue  # setup.py: not in a wheel
            text = z.read(path).decode()
            for _, _, new in hunks:
                assert "".join(new) in text, path
        with open(installer.C_MODULE) as f:
            assert z.read("detectron2/_C.py").decode() == f.read()
    assert installer.installed_state() == before
