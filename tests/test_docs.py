"""Docs that cannot rot: what README.md and docs/*.md name exists, and their short commands run.

* every repository path, relative link (and its #anchor) and picture exists;
* every config key (``MODEL.FCOS.*``, ``SOLVER.*``, ...) exists in fcos_d2's config, and
  the key tables of docs/configs.md list exactly the ``MODEL.FCOS`` keys;
* every ``--flag`` given to one of the repository's scripts is in that script's ``--help``,
  every ``make`` target is in the Makefile;
* the blocks marked ``<!-- docs-test: run -->`` (``run slow``: marked slow) run as they
  are, in a scratch folder with the repository's files, ``$HOME`` in a temporary folder;
* no page speaks of who measured what, or when.
"""
import json
import os
import re
import subprocess
import sys
import textwrap
from typing import Dict, List, Set, Tuple

import pytest

from helpers import REPO

PAGES = ["README.md"] + sorted(
    os.path.join("docs", n) for n in os.listdir(os.path.join(REPO, "docs")) if n.endswith(".md")
)
CHANGELOG = "CHANGELOG.md"
#: Paths of Detectron2's repository that the pages name (not files of this one).
DETECTRON2_PATHS = {
    "tools/train_net.py", "tools/lazyconfig_train_net.py", "tools/deploy/export_model.py",
    "demo/demo.py",
}
PATH_PATTERN = re.compile(
    r"(?<![\w/.~$-])((?:configs|tools|benchmarks|scripts|fcos_d2|tests|docs|\.ci)/[\w./*-]*[\w*]"
    r"|(?:train_net|demo|setup)\.py|requirements\.txt|Makefile|CHANGELOG\.md)"
)
KEY_PATTERN = re.compile(
    r"(?<![\w.])((?:MODEL|SOLVER|INPUT|DATASETS|DATALOADER|TEST)(?:\.[A-Z0-9_]+)+|VIS_PERIOD|SEED)"
    r"(?![\w])"
)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
RUN_MARK = re.compile(r"<!-- docs-test: run( slow)? -->\n```(\w+)\n(.*?)^```", re.S | re.M)
PROCESS_WORDS = [
    r"\bissue #?\d+", r"\bsessions?\b", r"\b20\d\d-\d\d-\d\d\b", r"\bUTC\b",
    r"\bload (average )?\(?\d", r"\b(yesterday|today|tonight|this morning)\b", r"\bmeasured by\b",
    r"\bthe lead\b", r"\bengineers?\b", r"\bbusy machine\b", r"\bidle machine\b",
]


def read(page: str) -> str:
    with open(os.path.join(REPO, page), encoding="utf-8") as f:
        return f.read()


def code_spans(text: str) -> List[str]:
    """Fenced blocks and inline `code` of a page."""
    blocks = [m.group(2) for m in FENCE.finditer(text)]
    inline = re.findall(r"`([^`\n]+)`", FENCE.sub("", text))
    return blocks + inline


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[`*_]", lambda m: "_" if m.group(0) == "_" else "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page_path: str) -> Set[str]:
    with open(page_path, encoding="utf-8") as f:
        text = FENCE.sub("", f.read())
    return {slug(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}


# ---- names that must exist ---------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES + [CHANGELOG])
def test_named_paths_exist(page):
    text = read(page)
    missing = []
    for span in code_spans(text) + re.findall(r"\]\(([^)]+)\)", text):
        for path in PATH_PATTERN.findall(span):
            path = path.rstrip(".")
            if path in DETECTRON2_PATHS or "*" in path:
                continue
            if not os.path.exists(os.path.join(REPO, path)):
                missing.append(path)
    assert not missing, f"{page} names files that do not exist: {sorted(set(missing))}"


@pytest.mark.parametrize("page", PAGES + [CHANGELOG])
def test_links_and_pictures_exist(page):
    text = FENCE.sub("", read(page))
    here = os.path.dirname(os.path.join(REPO, page))
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(here, path)) if path else os.path.join(REPO, page)
        if not os.path.exists(full):
            broken.append(target)
        elif anchor and full.endswith(".md") and anchor not in anchors(full):
            broken.append(target)
    assert not broken, f"{page}: broken links {broken}"


def all_keys() -> Set[str]:
    import fcos_d2

    cfg = fcos_d2.setup_cfg()
    keys = set()

    def walk(node, prefix):
        for k, v in node.items():
            keys.add(prefix + k)
            if hasattr(v, "items"):
                walk(v, prefix + k + ".")

    walk(cfg, "")
    return keys


@pytest.mark.parametrize("page", PAGES + [CHANGELOG])
def test_named_config_keys_exist(page):
    keys = all_keys()
    named = set(KEY_PATTERN.findall(read(page)))
    assert named - keys == set(), f"{page} names config keys that do not exist"


def fcos_key_table_entries() -> Set[str]:
    """The first-column keys of the tables in docs/configs.md's `MODEL.FCOS.*` section."""
    text = read("docs/configs.md")
    section = re.search(r"^## `MODEL\.FCOS\.\*` keys$(.*?)^## ", text, re.S | re.M).group(1)
    entries = set()
    for row in re.findall(r"^\| `([^`]+)` \|", section, re.M):
        entries.add(row)
    return entries - {"key"}


def test_configs_page_lists_every_fcos_key():
    import fcos_d2

    cfg = fcos_d2.setup_cfg()
    expected = set()

    def walk(node, prefix):
        for k, v in node.items():
            if hasattr(v, "items"):
                walk(v, prefix + k + ".")
            else:
                expected.add(prefix + k)

    walk(cfg.MODEL.FCOS, "")
    listed = fcos_key_table_entries()
    assert expected - listed == set(), "MODEL.FCOS keys missing from docs/configs.md"
    assert listed - expected == set(), "docs/configs.md lists keys that do not exist"


# ---- flags and make targets --------------------------------------------------------------

def commands(text: str) -> List[str]:
    """Shell commands of a page: fenced lines (continuations joined) and inline code."""
    found = []
    for match in FENCE.finditer(text):
        if match.group(1) in ("bash", "sh", ""):
            found += match.group(2).replace("\\\n", " ").splitlines()
    found += re.findall(r"`([^`\n]+)`", FENCE.sub("", text))
    return found


def script_flags(pages) -> Dict[str, Set[Tuple[str, str]]]:
    """script (repo path or -m module) -> {(flag, page)} named with it."""
    uses: Dict[str, Set[Tuple[str, str]]] = {}
    for page in pages:
        for line in commands(read(page)):
            line = line.split(" #")[0]
            match = re.search(r"(?:^|\s)(?:python\s+)?(-m\s+[\w.]+|[\w/.-]+\.py)\b(.*)", line)
            if not match:
                continue
            script = match.group(1).replace("-m ", "-m").replace(" ", "")
            if script in DETECTRON2_PATHS or not (
                script.startswith("-m") or os.path.isfile(os.path.join(REPO, script))
            ):
                continue
            for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", match.group(2)):
                uses.setdefault(script, set()).add((flag, page))
    return uses


HELP_RUNNER = textwrap.dedent("""
    import contextlib, io, json, runpy, sys
    out = {}
    for script in sys.argv[1:]:
        buffer = io.StringIO()
        sys.argv = [script, "--help"]
        with contextlib.redirect_stdout(buffer):
            try:
                if script.startswith("-m"):
                    runpy.run_module(script[2:], run_name="__main__", alter_sys=True)
                else:
                    runpy.run_path(script, run_name="__main__")
            except SystemExit:
                pass
            except Exception as e:  # reported by the test, naming the script
                buffer.write(f"FAILED: {type(e).__name__}: {e}")
        out[script] = buffer.getvalue()
    print("HELP-JSON" + json.dumps(out))
""")


def test_flags_exist_in_the_scripts():
    uses = script_flags(PAGES + [CHANGELOG])
    assert "train_net.py" in uses and "demo.py" in uses
    proc = subprocess.run(
        [sys.executable, "-c", HELP_RUNNER] + sorted(uses), cwd=REPO, capture_output=True,
        text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert "HELP-JSON" in proc.stdout, proc.stderr[-3000:]
    helps = json.loads(proc.stdout.split("HELP-JSON", 1)[1])
    unknown = []
    for script, flags in uses.items():
        if "usage:" not in helps[script]:
            unknown.append(f"{script} --help fails: {helps[script][-300:]}")
            continue
        options = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", helps[script]))
        unknown += [f"{page}: {script} {flag}" for flag, page in flags if flag not in options]
    assert not unknown, f"flags the scripts do not have: {sorted(unknown)}"


def test_make_targets_exist():
    targets = set(re.findall(r"^([\w-]+):", read("Makefile"), re.M))
    named = set()
    for page in PAGES:
        for line in commands(read(page)):
            named |= set(re.findall(r"(?:^|\s)make ([a-z][\w-]*)", line))
    assert {"test", "demo"} <= named and named <= targets, named - targets


# ---- the front page and the words ---------------------------------------------------------

def test_readme_is_a_front_page():
    text = read("README.md")
    assert 150 <= len(text.splitlines()) <= 220
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert pictures, "README.md has no picture"
    for picture in pictures:
        assert os.path.getsize(os.path.join(REPO, picture)) < 400_000, f"{picture} is large"
    assert "make test" in text and "make demo" in text
    assert "not trained here" in text and "39.2" in text
    for page in PAGES[1:]:
        assert f"({page})" in text, f"README.md does not link {page}"


@pytest.mark.parametrize("page", PAGES)
def test_no_process_words(page):
    text = read(page)
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for pattern in PROCESS_WORDS:
            match = re.search(pattern, line, re.I)
            if match:
                found.append(f"line {number}: {match.group(0)!r}")
    assert not found, f"{page} speaks of who measured or when: {found}"


# ---- the commands the pages show ---------------------------------------------------------

def runnable_blocks():
    params = []
    for page in PAGES:
        text = read(page)
        for match in RUN_MARK.finditer(text):
            line = text[: match.start()].count("\n") + 2
            marks = [pytest.mark.slow] if match.group(1) else []
            params.append(pytest.param(page, match.group(2), match.group(3),
                                       id=f"{page}:{line}", marks=marks))
    return params


def scratch_folder(tmp_path) -> str:
    """The repository's files (linked), without its output/ and datasets/."""
    work = tmp_path / "work"
    work.mkdir()
    for name in os.listdir(REPO):
        if name not in ("output", "datasets", ".git", ".venv"):
            os.symlink(os.path.join(REPO, name), work / name)
    return str(work)


def test_some_blocks_are_run():
    assert len(runnable_blocks()) >= 2


@pytest.mark.parametrize("page, language, code", runnable_blocks())
def test_page_commands_run(tmp_path, page, language, code):
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
        "FCOS_D2_DATASETS": os.environ.get(
            "FCOS_D2_DATASETS", os.path.join(REPO, "datasets", "fcos_demo")
        ),
    }
    command = ["bash", "-e", "-c", code] if language == "bash" else [sys.executable, "-c", code]
    proc = subprocess.run(command, cwd=scratch_folder(tmp_path), env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"{page}:\n{code}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
