"""What every notebook does first, and the one display helper notebooks share.

    P = notebook.start(preset)            # the preset, threads and seeds set, third-party noise hidden
    notebook.show_source(synthesis.fuse)  # the few lines behind a formula, where the text teaches it
    notebook.preset_table(P, ["group_size", "rerank_depth"])  # the fields a notebook uses, not all 70
    notebook.beside_reference(P, "02_sft_lora", numbers)      # this run next to the cpu preset's reference
"""
from __future__ import annotations

import inspect
import json
import warnings

from .config import get_preset
from .fetch import catalog_file
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


def reference() -> dict:
    """The cpu preset's committed reference numbers (data/reference_cpu.json): when, on what
    machine and how they were measured, and per notebook the numbers its results cell saves."""
    return json.loads(catalog_file("reference_cpu.json").read_text(encoding="utf-8"))


def beside_reference(preset, section: str, this_run: dict):
    """This run's numbers next to the reference's for notebook `section`, one row per quantity
    (the reference's first, then any only this run has; a blank cell: not measured there), each
    rounded to 3 decimals and shown as text (counts without ".0").
    A smoke run shows that every stage runs; the reference shows what a real budget earns."""
    import pandas as pd

    ref = reference()
    theirs = ref["results"].get(section)
    if theirs is None:
        raise KeyError(f"no section {section!r} in {catalog_file('reference_cpu.json')}; it has {sorted(ref['results'])}")
    keys = list(theirs) + [k for k in this_run if k not in theirs]
    columns = {f"this run ({preset.name})": [this_run.get(k) for k in keys],
               f"{ref['preset']} preset ({ref['measured']})": [theirs.get(k) for k in keys]}
    shown = {name: ["" if v is None else format(round(float(v), 3), "g") for v in values] for name, values in columns.items()}
    return pd.DataFrame(shown, index=pd.Index(keys, name=section))
