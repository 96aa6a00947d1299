"""What every notebook does first, and the one display helper notebooks share.

    P = notebook.start(preset)            # the preset, threads and seeds set, third-party noise hidden
    notebook.show_source(synthesis.fuse)  # the few lines behind a formula, where the text teaches it
    notebook.preset_table(P, ["group_size", "rerank_depth"])  # the fields a notebook uses, not all 70
"""
from __future__ import annotations

import inspect
import warnings

from .config import get_preset
from .runtime import KitWarning, setup


def start(preset, **overrides):
    """The named preset (with single fields overridden), after fixing torch's threads and every seed.

    Warnings of the libraries underneath (deprecations, version notes) are hidden; the kit's
    own (`KitWarning`: skipped documents, an unwritable cache) always show, since they say
    something about *this* run's data."""
    for category in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("always", category=KitWarning)  # inserted first, so it wins
    chosen = get_preset(preset, **overrides)
    setup(chosen)
    return chosen


def show_source(function):
    """The source of a kit function, highlighted in a notebook (plain text elsewhere)."""
    source = inspect.getsource(function)
    try:
        from IPython.display import Code
    except ImportError:
        return source
    return Code(source, language="python")


def preset_table(preset, fields: list[str]):
    """The preset's name and the given fields as a short two-column table (a full `Preset` prints
    as one line of seventy fields, unreadable on a projector)."""
    import pandas as pd

    unknown = [f for f in fields if f not in preset.__dataclass_fields__]
    if unknown:
        raise KeyError(f"unknown Preset field(s) {unknown}")
    rows = {"preset": preset.name, **{f: getattr(preset, f) for f in fields}}
    return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=pd.Index(list(rows), name="field"))
