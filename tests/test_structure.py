"""The package's import structure: modules in the order the data flows, no cycle, no import
against the flow. A new module gets a place in LAYERS; an import that breaks the order fails here."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "grouprank_mini"

# Bottom to top. A module may import only modules before it: data → retrieval → the inference
# engine (a teacher is a reranker of its pool, so rerank sits below synthesis) → synthesis →
# training → experiments → what notebooks and the main job call.
LAYERS = [
    "config", "runtime", "fetch", "runs", "prompts", "parsing", "plots",  # no kit imports but these
    "collection", "hubdata", "data", "evaluate", "retrieval",  # data and first-stage retrieval
    "groups", "llm", "endpoint", "rerank",  # inference
    "teachers", "synthesis",  # answer-free data
    "rewards", "train",  # training
    "experiments", "notebook", "pipeline",  # what the notebooks run
    "plan", "dryrun",  # the GPU path planned, and run on a CPU
]


def kit_imports(path: Path) -> set[str]:
    """Names of the package's modules that `path` imports (relative or absolute imports)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import y
                found.add(node.module.split(".")[0])
            elif node.level == 1 or node.module == "grouprank_mini":  # from . import x / from grouprank_mini import x
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("grouprank_mini."):
                found.add(node.module.split(".")[1])
    return found & set(LAYERS)


def test_every_module_has_a_place_in_the_layers():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(LAYERS)


def test_imports_follow_the_flow():
    against = [f"{path.stem} imports {other}"
               for path in PACKAGE.glob("*.py") if path.stem != "__init__"
               for other in kit_imports(path) if LAYERS.index(other) >= LAYERS.index(path.stem)]
    assert not against


def test_the_package_face_imports_only_the_bottom():
    assert kit_imports(PACKAGE / "__init__.py") <= {"config", "runtime"}


def test_the_checker_sees_imports(tmp_path):
    """The rule can fail: an upward import in a module is found."""
    module = tmp_path / "groups.py"
    module.write_text("from .train import train_sft\nfrom . import rerank\nimport os\n")
    assert kit_imports(module) == {"train", "rerank"}
