"""Where things live and how the process is set up: every folder, offline mode, threads, seeds,
and the one way the kit writes a file or folder so that an interruption never leaves half of it."""
from __future__ import annotations

import os
import random
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class KitWarning(UserWarning):
    """What the kit itself warns about (skipped documents, an unwritable cache). Notebooks hide
    third-party warnings but always show these (see `notebook.start`)."""


# --- folders -------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Ignored folder for converted weights, teacher caches, datasets and adapters."""
    path = Path(os.environ.get("GROUPRANK_CACHE", PROJECT_ROOT / ".cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_places() -> list[Path]:
    """Where the test collections are looked for, in order: $GROUPRANK_DATA when set, the kit's own
    data/ (where `make data` puts them; <cache>/data for a package installed outside a clone, since
    site-packages is no place for them), then ../shared/data beside the project. Fetches go to the first."""
    configured = os.environ.get("GROUPRANK_DATA")
    own = PROJECT_ROOT / "data" if (PROJECT_ROOT / "pyproject.toml").is_file() else cache_dir() / "data"
    return ([Path(configured)] if configured else []) + [own, PROJECT_ROOT.parent / "shared" / "data"]


def data_dir(name: str | None = None) -> Path:
    """The first of `data_places()` that holds collection `name` (a folder such as cranfield/), or
    with no name any collection folder."""
    places = data_places()
    for path in places:
        if (path / name).is_dir() if name else path.is_dir() and any(p.is_dir() for p in path.iterdir()):
            return path
    wanted = name or "cranfield"
    raise FileNotFoundError(
        f"No {name or 'collection'} folder in {' or '.join(map(str, places))}: run `make data` (or `python -m "
        f"grouprank_mini.data fetch {wanted}`) on a machine with internet, or set GROUPRANK_DATA to a folder holding {wanted}/."
    )


def dataset_root(preset) -> Path:
    """Where synthesis saves a preset's datasets: <cache>/datasets/<preset>-<collection>/
    holding sft/, rl/, card.md and histograms.png."""
    return cache_dir() / "datasets" / f"{preset.name}-{re.sub(r'[:/]', '_', preset.collection)}"


def dataset_dir(preset, kind: str) -> Path:
    """The saved "sft" or "rl" dataset of a preset."""
    return dataset_root(preset) / kind


def adapter_dir(preset, stage: str) -> Path:
    """Default output folder of a training stage ("sft" or "grpo"): <cache>/adapters/<preset>/<stage>."""
    return cache_dir() / "adapters" / preset.name / stage


def grpo_dir(preset, ablation: str | None = None) -> Path:
    """The GRPO adapter's folder: "grpo", or "grpo-<ablation>" for a run with a reward term off."""
    return adapter_dir(preset, f"grpo-{ablation}" if ablation else "grpo")


# --- writing without half-written results ---------------------------------------------------------

@contextmanager
def atomic_path(path: Path):
    """Yield a temporary sibling of `path` to write a file or a folder into; when the block ends
    without an error it takes the place of `path` in one rename, else it is removed. A reader
    therefore sees the old content or the new, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir():
            _remove(path)  # os.replace cannot put a folder over a non-empty folder
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def write_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` through `atomic_path`, flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# --- the process -----------------------------------------------------------------------------------

def configure_environment() -> None:
    """Keep Hugging Face, matplotlib and Jupyter state inside the project and work offline.

    Runs on import of the package, before transformers or datasets are imported, because
    both read these variables once at import time. Set GROUPRANK_ONLINE=1 to allow the hub.
    """
    state = PROJECT_ROOT / ".cache"
    defaults = {
        "HF_HOME": state / "hf",
        "MPLCONFIGDIR": state / "matplotlib",
        "IPYTHONDIR": state / "ipython",
        "JUPYTER_CONFIG_DIR": state / "jupyter" / "config",
        "JUPYTER_DATA_DIR": state / "jupyter" / "data",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if os.environ.get("GROUPRANK_ONLINE") != "1":
        defaults.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for key, value in defaults.items():
        os.environ.setdefault(key, str(value))


def bars_hidden() -> bool:
    """True when $TQDM_DISABLE=1: `make demo` sets it, so that its executed notebooks carry no
    progress widgets frozen at "0%" (a bar only helps someone watching)."""
    return os.environ.get("TQDM_DISABLE") == "1"


def setup(preset) -> None:
    """Fix torch's thread count and every seed from the preset (call once per process/notebook).
    $GROUPRANK_THREADS, when set, wins over the preset's `threads` (e.g. on a machine shared with other jobs)."""
    import numpy as np
    import torch

    from transformers.utils import logging

    logging.disable_progress_bar()  # per-tensor loading bars say nothing in a notebook
    torch.set_num_threads(threads(preset))
    random.seed(preset.seed)
    np.random.seed(preset.seed)
    torch.manual_seed(preset.seed)


def threads(preset) -> int:
    """The torch thread count a process uses: $GROUPRANK_THREADS, or else the preset's."""
    value = os.environ.get("GROUPRANK_THREADS", "").strip()
    if not value:
        return preset.threads
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"GROUPRANK_THREADS must be a whole number >= 1, got {value!r}")
    return int(value)
