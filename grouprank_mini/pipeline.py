"""The main job: run the notebooks 00 -> 04 in order through papermill with one preset.

    python -m grouprank_mini.pipeline --preset smoke      # what `make demo` runs

Executed notebooks, figures and results.json go to runs/<preset>-<timestamp>/. A failing
cell stops the run and names the notebook and the cell. Finished stages (teacher calls,
datasets, adapters) are cached under .cache/, so a re-run after an interruption resumes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .runtime import PROJECT_ROOT

NOTEBOOKS = PROJECT_ROOT / "notebooks"


def run_notebooks(preset: str, run_dir: Path, only: list[str] | None = None) -> None:
    import papermill

    run_dir.mkdir(parents=True, exist_ok=True)
    for notebook in sorted(NOTEBOOKS.glob("[0-9]*.ipynb")):
        if only and not any(notebook.name.startswith(prefix) for prefix in only):
            continue
        started = time.perf_counter()
        print(f"[{preset}] {notebook.name} ...", flush=True)
        try:
            papermill.execute_notebook(
                str(notebook), str(run_dir / notebook.name), cwd=str(NOTEBOOKS),
                parameters={"preset": preset, "run_dir": str(run_dir)}, progress_bar=False, kernel_name="python3",
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
    rows = []
    for section, values in json.loads(path.read_text()).items():
        for name, value in values.items():
            if isinstance(value, (int, float)):
                rows.append(f"  {section:<18} {name:<34} {value:>10.4f}")
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="smoke", help="smoke (CI, minutes), cpu (laptop, ~2 h) or gpu")
    parser.add_argument("--run-dir", type=Path, help="default: runs/<preset>-<timestamp>")
    parser.add_argument("--only", nargs="*", help="notebook prefixes to run, e.g. 00 01")
    args = parser.parse_args(argv)
    run_dir = args.run_dir or PROJECT_ROOT / "runs" / f"{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = run_dir.resolve()  # notebooks run inside notebooks/, so a relative path would move
    started = time.perf_counter()
    run_notebooks(args.preset, run_dir, args.only)
    print(f"\nAll notebooks ran in {(time.perf_counter() - started) / 60:.1f} min. Results ({run_dir}):")
    print(summary(run_dir))


if __name__ == "__main__":
    main()
