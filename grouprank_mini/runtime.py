"""Where things live and how the process is set up: folders, offline mode, threads, seeds."""
from __future__ import annotations

import os
import random
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """Ignored folder for converted weights, teacher caches, datasets and adapters."""
    path = Path(os.environ.get("GROUPRANK_CACHE", PROJECT_ROOT / ".cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """The folder holding the classic test collections (cranfield/, cisi/, ...)."""
    configured = os.environ.get("GROUPRANK_DATA")
    candidates = [Path(configured)] if configured else [PROJECT_ROOT.parent / "shared" / "data"]
    for path in candidates:
        if path.is_dir():
            return path
    raise FileNotFoundError(
        f"No test collections found at {candidates[0]}. Set GROUPRANK_DATA to a folder holding "
        "cranfield/ (cran.all.1400, cran.qry, cranqrel), cisi/, adi/ or vaswani/; the files are "
        "free to download from the Glasgow IR resources page (ir.dcs.gla.ac.uk/resources/test_collections)."
    )


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
