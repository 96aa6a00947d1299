"""Notebooks are stored clean (outputs live in runs/), and each one is wired for papermill."""
import ast
import importlib
import importlib.util
import json
from pathlib import Path

import pytest
from pyflakes import checker, messages

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS][:1] == ["00_quickstart.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    dirty = [i for i, c in enumerate(cells) if c.get("outputs") or c.get("execution_count")]
    assert not dirty, f"{path.name}: code cells {dirty} carry outputs; clear them (executed copies go to runs/)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_has_parameters_cell_with_smoke_default(path):
    cells = json.loads(path.read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters' for papermill"
    assert 'preset = "smoke"' in "".join(tagged[0]["source"])


def test_every_kit_function_a_notebook_calls_exists():
    """Catches a renamed or lost helper without running the (slow) notebooks: every attribute a
    notebook reads of a kit module it imported (``from grouprank_mini import x``) exists."""
    missing = []
    for path in NOTEBOOKS:
        trees = [ast.parse("".join(c["source"])) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        imported = {alias.asname or alias.name for tree in trees for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module == "grouprank_mini" for alias in node.names}
        modules = {name: importlib.import_module(f"grouprank_mini.{name}") for name in imported
                   if importlib.util.find_spec(f"grouprank_mini.{name}")}
        for tree in trees:
            for node in ast.walk(tree):
                module = getattr(node.value, "id", None) if isinstance(node, ast.Attribute) else None
                if module in modules and not hasattr(modules[module], node.attr):
                    missing.append(f"{path.name}: {module}.{node.attr}")
    assert not missing


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_cell_reads_a_name_that_was_never_defined(path):
    """A name left behind by an edit (a variable renamed in one cell, still read in a later one)
    fails here in seconds; otherwise only a branch the preset happens to take finds it, after minutes."""
    code = "\n\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
    found = checker.Checker(ast.parse(code), filename=path.name).messages
    undefined = [str(m) for m in found if isinstance(m, messages.UndefinedName)]
    assert not undefined, f"{path.name} (cells joined in order): {undefined}"
