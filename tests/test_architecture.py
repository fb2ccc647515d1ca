"""The layers are a contract: import-linter checks the code, and DEVELOPERS.md shows the same layers."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "protloc"


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def _layers() -> list[list[str]]:
    """The layers contract, top first; each layer a list of sibling packages."""
    (contract,) = [c for c in _config()["contracts"] if c["type"] == "layers"]
    return [[m.strip() for m in re.split(r"[|:]", layer)] for layer in contract["layers"]]


def _tree_block() -> list[tuple[str, str]]:
    """(package, description) rows of the ``src/protloc/`` block in DEVELOPERS.md."""
    text = (ROOT / "DEVELOPERS.md").read_text()
    block = re.search(r"```\nsrc/protloc/\n(.*?)```", text, re.S)
    assert block, "DEVELOPERS.md has no ```src/protloc/ ...``` tree block"
    rows = [re.match(r"  (\w+)/\s+(.*)", ln) for ln in block.group(1).splitlines() if re.match(r"  \w", ln)]
    return [(m.group(1), m.group(2)) for m in rows if m]


def _may_import() -> dict[str, list[str]]:
    """The 'package | may import' table of DEVELOPERS.md."""
    text = (ROOT / "DEVELOPERS.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (.*?) \|$", text, re.M)
    return {pkg: re.findall(r"`(\w+)`", allowed) for pkg, allowed in rows}


def _lint(src_dir: Path) -> subprocess.CompletedProcess:
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True, no_logo=True))")
    env = {"PYTHONPATH": str(src_dir), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=src_dir)


def test_import_contracts_are_kept():
    """cli > web > reports > inference | training > models > data | synth > io > core, and more."""
    res = _lint(ROOT / "src")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "3 kept, 0 broken" in res.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The check can fail: core importing the CLI is reported (on a copy of the package)."""
    copy = tmp_path / "src" / "protloc"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "static", "*.png"))
    atomic = copy / "core" / "atomic.py"
    atomic.write_text(atomic.read_text() + "\n\ndef _oops():\n    from protloc.cli.main import main  # noqa\n")
    res = _lint(tmp_path / "src")
    assert res.returncode == 1 and "protloc.core.atomic -> protloc.cli.main" in res.stdout, res.stdout[-3000:]


def test_developers_tree_matches_the_packages_and_the_layers():
    tree = [name for name, _ in _tree_block()]
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert sorted(tree) == packages, "DEVELOPERS.md's src/protloc/ block lists other packages than src/protloc/"
    assert tree == [m for layer in _layers() for m in layer], \
        "DEVELOPERS.md's tree must list the packages in the order of the layers contract (top first)"
    assert all(text.strip() for _, text in _tree_block()), "every package in the tree says what it holds"


def test_developers_may_import_table_matches_the_layers():
    layers = _layers()
    table = _may_import()
    assert sorted(table) == sorted(m for layer in layers for m in layer)
    for i, layer in enumerate(layers):
        below = [m for lower in layers[i + 1:] for m in lower]
        for pkg in layer:
            assert table[pkg] == below, (pkg, table[pkg], below)
