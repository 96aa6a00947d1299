"""Folders written the way the BRIGHT and R2MED hub repositories lay them out, for the tests."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write_hub_repo(folder: Path, files: dict[tuple[str, str], tuple[str, list[dict]]], readme: bool = True) -> str:
    """Write {(config, split): (path in repo, rows)} as parquet or jsonl (by the path's suffix),
    plus the README.md whose YAML `configs:` tells which file is which split (unless not `readme`)."""
    by_config: dict[str, list[tuple[str, str]]] = {}
    for (config, split), (path, rows) in files.items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.endswith(".parquet"):
            pq.write_table(pa.Table.from_pylist(rows), target)
        else:
            target.write_text("".join(json.dumps(row) + "\n" for row in rows))
        by_config.setdefault(config, []).append((split, path))
    yaml = ["---", "configs:"]
    for config, entries in by_config.items():
        yaml += [f"- config_name: {config}", "  data_files:"]
        yaml += [line for split, path in entries for line in (f"  - split: {split}", f"    path: {path}")]
    if readme:
        (folder / "README.md").write_text("\n".join(yaml + ["---", "", "# test fixture", ""]))
    return str(folder)


# --- BRIGHT: configs examples / documents / long_documents, one split per domain ------------------

def bright_example(qid, query, gold, gold_long, excluded):
    return {"query": query, "reasoning": "why", "id": qid, "excluded_ids": excluded,
            "gold_ids": gold, "gold_ids_long": gold_long}


BRIGHT = {
    ("examples", "biology"): [
        bright_example("0", "Why do moths fly towards light?", ["d1", "d2"], ["L1"], ["N/A"]),
        bright_example("1", "How do plant roots sense gravity?", ["d3"], ["L2"], ["d1"]),
        bright_example("2", "Why is blood red?", ["d2"], ["L1"], []),
    ],
    ("documents", "biology"): [{"id": f"d{i}", "content": f"biology passage {i}"} for i in range(1, 6)],
    ("long_documents", "biology"): [{"id": f"L{i}", "content": f"long biology page {i}\n  second line"} for i in range(1, 4)],
    ("examples", "earth_science"): [bright_example("0", "Why is the sky blue?", ["e1"], ["e1"], [])],
    ("documents", "earth_science"): [{"id": "e1", "content": "Rayleigh scattering"}],
}


def write_bright(folder: Path, tables=BRIGHT) -> str:
    return write_hub_repo(folder, {(config, split): (f"{config}/{split}-00000-of-00001.parquet", rows)
                                   for (config, split), rows in tables.items()})


# --- R2MED: configs query / corpus / qrels, each with one split named after it --------------------

R2MED = {
    "query": [{"id": "0", "text": "Why does my knee click?", "doc_id": ["p1"], "answer": "...", "body_system": ""},
              {"id": "1", "text": "What lowers blood pressure?", "doc_id": ["p2", "p3"], "answer": "...", "body_system": ""}],
    "corpus": [{"id": "p1", "text": "Crepitus is ..."}, {"id": "p2", "text": "Diuretics ..."},
               {"id": "p3", "text": " ACE inhibitors ... "}, {"id": "p4", "text": "Unrelated."}],
    "qrels": [{"q_id": "0", "p_id": "p1", "score": 1}, {"q_id": "1", "p_id": "p2", "score": 2},
              {"q_id": "1", "p_id": "p3", "score": 1}],
}


def write_r2med(folder: Path, tables=R2MED, split_names=None, readme: bool = True) -> str:
    """As `R2MED/<Task>` on the hub: query.jsonl, corpus.jsonl, qrels.jsonl, split = config name;
    without `readme` as R2MED samples are passed around: the three files alone."""
    split_names = split_names or {config: config for config in tables}
    return write_hub_repo(folder, {(config, split_names[config]): (f"{config}.jsonl", rows)
                                   for config, rows in tables.items()}, readme=readme)
