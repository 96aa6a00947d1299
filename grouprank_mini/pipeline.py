"""The main job: run the notebooks 00 -> 04 in order through papermill with one preset.

    python -m grouprank_mini.pipeline --preset smoke      # what `make demo` runs
    python -m grouprank_mini.pipeline --preset cpu --set group_size=5 --set passes=2

Executed notebooks, figures and results.json go to runs/<preset>-<timestamp>/. A failing
cell stops the run and names the notebook and the cell. Finished stages (teacher calls,
datasets, adapters) are cached under .cache/, so a re-run after an interruption resumes.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path

from .config import get_preset
from .runtime import PROJECT_ROOT

NOTEBOOKS = PROJECT_ROOT / "notebooks"


def run_notebooks(preset: str, run_dir: Path, only: list[str] | None = None, overrides: dict | None = None) -> None:
    import papermill

    get_preset(preset, **(overrides or {}))  # an unknown preset or field fails here, before any notebook runs
    run_dir.mkdir(parents=True, exist_ok=True)
    for notebook in sorted(NOTEBOOKS.glob("[0-9]*.ipynb")):
        if only and not any(notebook.name.startswith(prefix) for prefix in only):
            continue
        started = time.perf_counter()
        print(f"[{preset}] {notebook.name} ...", flush=True)
        try:
            papermill.execute_notebook(
                str(notebook), str(run_dir / notebook.name), cwd=str(NOTEBOOKS),
                parameters={"preset": preset, "overrides": overrides or {}, "run_dir": str(run_dir)},
                progress_bar=False, kernel_name="python3",
            )
        except papermill.PapermillExecutionError as err:
            sys.exit(f"FAILED: {notebook.name}, cell {err.exec_count}: {err.ename}: {err.evalue}\n"
                     f"see the executed copy in {run_dir / notebook.name}")
        print(f"[{preset}] {notebook.name} done in {time.perf_counter() - started:.0f} s", flush=True)


def summary(run_dir: Path) -> str:
    """The headline numbers every notebook saved into results.json, as a small text table."""
    path = run_dir / "results.json"
    if not path.exists():
        return "(no results.json written)"
    rows = [(section, name, value) for section, values in json.loads(path.read_text()).items()
            for name, value in values.items() if isinstance(value, (int, float))]
    width = max((len(name) for _, name, _ in rows), default=0)
    return "\n".join(f"  {section:<18} {name:<{width}} {_number(value):>8}" for section, name, value in rows)


def _number(value: float) -> str:
    """Counts (queries, rows, steps) as whole numbers, everything else with 4 decimals."""
    return f"{value:g}" if float(value).is_integer() else f"{value:.4f}"


def field_value(text: str) -> tuple[str, object]:
    """``name=value`` of --set: the value read as a Python literal (number, tuple, None, ...),
    else kept as a string; literal_eval evaluates no code."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--set takes name=value, got {text!r}")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="smoke", help="smoke (CI, minutes), cpu (laptop, ~2 h) or gpu")
    parser.add_argument("--run-dir", type=Path, help="default: runs/<preset>-<timestamp>")
    parser.add_argument("--only", nargs="*", help="notebook prefixes to run, e.g. 00 01")
    parser.add_argument("--set", type=field_value, action="append", default=[], metavar="FIELD=VALUE",
                        help="override one Preset field in every notebook, e.g. --set group_size=5 (repeatable)")
    args = parser.parse_args(argv)
    run_dir = args.run_dir or PROJECT_ROOT / "runs" / f"{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = run_dir.resolve()  # notebooks run inside notebooks/, so a relative path would move
    # The kernels inherit these: progress bars only help someone watching, and an executed copy
    # would keep each one as a widget frozen at "0%" (the tqdm default, and datasets' own switch).
    # Set here, in the command, so that a caller of run_notebooks keeps its own environment.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    started = time.perf_counter()
    run_notebooks(args.preset, run_dir, args.only, dict(args.set))
    print(f"\nAll notebooks ran in {(time.perf_counter() - started) / 60:.1f} min. Results ({run_dir}):")
    print(summary(run_dir))


if __name__ == "__main__":
    main()
