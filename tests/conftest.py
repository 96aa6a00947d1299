"""Shared fixtures: the four local collections (each loaded once per session) and a
hand-made toy collection whose scores can be worked out on paper."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import warnings

# Before anything imports torch or datasets: both read these once, at import time.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# load_dataset writes an Arrow cache for every folder it reads; keep the tests' copies out of
# the project's own cache and remove them at the end.
_DATASETS_CACHE = tempfile.mkdtemp(prefix="grouprank-test-datasets-")
atexit.register(shutil.rmtree, _DATASETS_CACHE, ignore_errors=True)
os.environ.setdefault("HF_DATASETS_CACHE", _DATASETS_CACHE)

import pytest  # noqa: E402
import torch  # noqa: E402

from grouprank_mini.data import Collection, load_collection  # noqa: E402

# Two shared cores: torch's default of 2 threads makes runs 10-20x slower when the other core is busy.
torch.set_num_threads(1)


def _load_quietly(name: str) -> Collection:
    # Cranfield warns about its two empty documents; tests that check the warning load it themselves.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return load_collection(name)


@pytest.fixture(scope="session")
def cranfield() -> Collection:
    return _load_quietly("cranfield")


@pytest.fixture(scope="session")
def cisi() -> Collection:
    return _load_quietly("cisi")


@pytest.fixture(scope="session")
def adi() -> Collection:
    return _load_quietly("adi")


@pytest.fixture(scope="session")
def vaswani() -> Collection:
    return _load_quietly("vaswani")


@pytest.fixture(scope="session")
def collections(cranfield, cisi, adi, vaswani) -> dict[str, Collection]:
    return {"cranfield": cranfield, "cisi": cisi, "adi": adi, "vaswani": vaswani}


@pytest.fixture
def toy() -> Collection:
    """q1: d1 gain 2, d2 gain 1, d3 judged 0; q2: d4 gain 1; q3: judged but nothing relevant."""
    docs = {f"d{i}": f"document {i}" for i in range(1, 6)}
    queries = {"q1": "first", "q2": "second", "q3": "third"}
    qrels = {"q1": {"d1": 2, "d2": 1, "d3": 0}, "q2": {"d4": 1}, "q3": {"d5": 0}}
    return Collection("toy", docs, queries, qrels)
