"""The layout the README's "Layout" and "Architecture" sections describe: one op in one place, no twin
file names, short source files, no citations of files the repository does not hold."""

import ast
import collections
import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).parents[1]
SOURCE_DIRS = ("effdrop_triton", "kernels", "models", "bench", "tests")
MAX_LINES = 500  # outside tests/, bench/ and kernels/


def _sources():
    """The tracked and new (not ignored) Python files of the source folders."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", *SOURCE_DIRS], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / name for name in listed if name.endswith(".py") and (ROOT / name).exists()]


def test_no_two_source_files_share_a_name_but_an_op_and_its_kernels():
    by_name = collections.defaultdict(list)
    for path in _sources():
        if path.name not in ("__init__.py", "__main__.py", "conftest.py"):
            by_name[path.name].append(path.relative_to(ROOT).parts[0] if path.parent.name != "ops"
                                      else "effdrop_triton/ops")
    twins = {name: dirs for name, dirs in by_name.items() if len(dirs) > 1}
    # by design: an op's ops/X.py and kernels/X.py
    assert all(sorted(dirs) == ["effdrop_triton/ops", "kernels"] for dirs in twins.values()), twins
    kernels = {p.name for p in (ROOT / "kernels").glob("*.py")}
    ops = {p.name for p in (ROOT / "effdrop_triton" / "ops").glob("*.py")}
    # a kernels file without an op of its name computes what several ops share
    assert kernels - ops - {"__init__.py"} == {"common.py", "unit_gate.py"}


def test_source_files_stay_short():
    long = {str(p.relative_to(ROOT)): n for p in _sources()
            if p.relative_to(ROOT).parts[0] not in ("tests", "bench", "kernels")
            and (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_docstrings_cite_only_the_repository():
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node) or ""
                assert not re.search(r"\bSPEC\b|SPEC\.md|STYLE\.md|\.\./shared", doc), (path, getattr(node, "name", ""))


def test_the_drop_levels_have_one_numbering():
    """No module keeps a table of level names or codes of its own: they all read ``levels.DropLevel``."""
    pattern = re.compile(r"""["']neuron["']\s*:\s*\d|\d\s*:\s*["']neuron["']|DROP_(NONE|NEURON|CHANNEL)\b|STREAM_[A-Z]+\b""")
    offenders = [str(p.relative_to(ROOT)) for p in _sources() if p.relative_to(ROOT).parts[0] != "tests"
                 and pattern.search(p.read_text())]
    assert not offenders


def test_readme_architecture_names_files_that_exist():
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"^## Architecture\n(.*?)^## ", readme, re.S | re.M).group(1)
    paths = set(re.findall(r"`((?:effdrop_triton|kernels|models|bench|tests)/[\w/]+\.py)`", section))
    assert len(paths) >= 6
    assert not [p for p in sorted(paths) if not (ROOT / p).exists()]
