"""Notebooks are stored clean (outputs live in runs/), and each one is wired for papermill."""
import ast
import importlib
import json
from pathlib import Path

import pytest

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
    """Catches a renamed or lost helper without running the (slow) notebooks."""
    missing = []
    for path in NOTEBOOKS:
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            for node in ast.walk(ast.parse("".join(cell["source"]))):
                module = getattr(node.value, "id", None) if isinstance(node, ast.Attribute) else None
                if module in KIT_MODULES and not hasattr(importlib.import_module(f"grouprank_mini.{module}"), node.attr):
                    missing.append(f"{path.name}: {module}.{node.attr}")
    assert not missing


KIT_MODULES = {"data", "evaluate", "models", "plots", "prompts", "rerank", "retrieval", "rewards", "runtime",
               "synthesis", "train"}
