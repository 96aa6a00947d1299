"""BRIGHT and R2MED loaders, on folders written here exactly as the hub repositories lay them out."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grouprank_mini.data import Collection, DataError, load_collection
from grouprank_mini.evaluate import evaluate
from grouprank_mini.hubdata import HubOfflineError, hub_offline, load_bright, load_r2med
from grouprank_mini.runtime import PROJECT_ROOT

R2MED_DEMO = PROJECT_ROOT.parent / "shared" / "reference" / "r2med_biology_demo"


def write_hub_repo(folder: Path, files: dict[tuple[str, str], tuple[str, list[dict]]]) -> str:
    """Write {(config, split): (path in repo, rows)} as parquet or jsonl (by the path's suffix),
    plus the README.md whose YAML `configs:` tells `datasets` which file is which split."""
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


@pytest.fixture
def bright_repo(tmp_path) -> str:
    return write_bright(tmp_path / "BRIGHT")


def test_bright_documents_gold_ids_and_excluded(bright_repo):
    collection = load_bright("biology", source=bright_repo)
    assert collection.name == "bright:biology"
    assert collection.docs == {f"d{i}": f"biology passage {i}" for i in range(1, 6)}
    assert collection.queries == {"0": "Why do moths fly towards light?", "1": "How do plant roots sense gravity?",
                                  "2": "Why is blood red?"}
    assert collection.qrels == {"0": {"d1": 1, "d2": 1}, "1": {"d3": 1}, "2": {"d2": 1}}
    assert collection.excluded == {"1": {"d1"}}  # "N/A" is a placeholder, not an id


def test_bright_long_documents_use_gold_ids_long(bright_repo):
    collection = load_bright("biology:long", source=bright_repo)
    assert collection.name == "bright:biology:long"
    assert sorted(collection.docs) == ["L1", "L2", "L3"]
    assert collection.docs["L1"] == "long biology page 1\n  second line"  # line breaks kept (code documents)
    assert collection.qrels == {"0": {"L1": 1}, "1": {"L2": 1}, "2": {"L1": 1}}
    assert collection.excluded == {"1": {"d1"}}


def test_bright_domain_is_the_split(bright_repo):
    collection = load_bright("earth_science", source=bright_repo)
    assert collection.docs == {"e1": "Rayleigh scattering"}
    assert collection.qrels == {"0": {"e1": 1}} and collection.excluded == {}


def test_evaluate_honours_bright_excluded_ids(bright_repo):
    collection = load_bright("biology", source=bright_repo)
    run = {"1": {"d1": 0.9, "d3": 0.8}}  # d1 is excluded for query 1, so d3 counts as rank 1
    assert evaluate(run, collection, qids=["1"])["nDCG@10"] == pytest.approx(1.0)
    unfiltered = Collection(collection.name, collection.docs, collection.queries, collection.qrels)
    assert evaluate(run, unfiltered, qids=["1"])["nDCG@10"] == pytest.approx(1 / math.log2(3))


def _broken(config: str, split: str, row: int, **changes) -> dict:
    tables = copy.deepcopy(BRIGHT)
    tables[(config, split)][row].update(changes)
    return tables


@pytest.mark.parametrize("tables, config, row, message", [
    (_broken("examples", "biology", 1, query=None), "examples", 2, "missing field(s) ['query']"),
    (_broken("examples", "biology", 0, excluded_ids=None), "examples", 1, "missing field(s) ['excluded_ids']"),
    (_broken("examples", "biology", 2, gold_ids=["nope"]), "examples", 3, "gold_ids names unknown document(s) ['nope']"),
    (_broken("examples", "biology", 2, id="0"), "examples", 3, "duplicate id '0'"),
    (_broken("documents", "biology", 1, content="   "), "documents", 2, "empty content"),
    (_broken("documents", "biology", 3, id="d1"), "documents", 4, "duplicate id 'd1'"),
])
def test_bright_bad_rows_name_config_and_row(tmp_path, tables, config, row, message):
    source = write_bright(tmp_path / "BRIGHT", tables)
    with pytest.raises(DataError) as err:
        load_bright("biology", source=source)
    assert f"config '{config}' split 'biology': row {row}: {message}" in str(err.value)


def test_bright_unknown_domain_or_spec(bright_repo):
    with pytest.raises(DataError, match="config 'documents' split 'physics'.*Unknown split"):
        load_bright("physics", source=bright_repo)
    with pytest.raises(ValueError, match="'<domain>:long'"):
        load_bright("biology:short", source=bright_repo)


# --- R2MED: configs query / corpus / qrels, each with one split named after it --------------------

R2MED = {
    "query": [{"id": "0", "text": "Why does my knee click?", "doc_id": ["p1"], "answer": "...", "body_system": ""},
              {"id": "1", "text": "What lowers blood pressure?", "doc_id": ["p2", "p3"], "answer": "...", "body_system": ""}],
    "corpus": [{"id": "p1", "text": "Crepitus is ..."}, {"id": "p2", "text": "Diuretics ..."},
               {"id": "p3", "text": " ACE inhibitors ... "}, {"id": "p4", "text": "Unrelated."}],
    "qrels": [{"q_id": "0", "p_id": "p1", "score": 1}, {"q_id": "1", "p_id": "p2", "score": 2},
              {"q_id": "1", "p_id": "p3", "score": 1}],
}


def write_r2med(folder: Path, tables=R2MED, split_names=None) -> str:
    """As `R2MED/<Task>` on the hub: query.jsonl, corpus.jsonl, qrels.jsonl, split = config name."""
    split_names = split_names or {config: config for config in tables}
    return write_hub_repo(folder, {(config, split_names[config]): (f"{config}.jsonl", rows)
                                   for config, rows in tables.items()})


def test_r2med_from_hub_layout(tmp_path):
    collection = load_r2med("Medical-Sciences", source=write_r2med(tmp_path / "Medical-Sciences"))
    assert collection.name == "r2med:Medical-Sciences"
    assert collection.queries == {"0": "Why does my knee click?", "1": "What lowers blood pressure?"}
    assert collection.docs["p3"] == "ACE inhibitors ..." and len(collection.docs) == 4
    assert collection.qrels == {"0": {"p1": 1}, "1": {"p2": 2, "p3": 1}}
    assert collection.excluded == {}


def test_r2med_takes_the_only_split_whatever_its_name(tmp_path):
    source = write_r2med(tmp_path / "copy", split_names={"query": "train", "corpus": "train", "qrels": "test"})
    assert load_r2med("Biology", source=source).qrels == {"0": {"p1": 1}, "1": {"p2": 2, "p3": 1}}


def _r2med_broken(config: str, row: int, **changes) -> dict:
    tables = copy.deepcopy(R2MED)
    tables[config][row].update(changes)
    return tables


@pytest.mark.parametrize("tables, config, row, message", [
    (_r2med_broken("qrels", 1, q_id="9"), "qrels", 2, "judgment names unknown query '9'"),
    (_r2med_broken("qrels", 2, p_id="p9"), "qrels", 3, "judgment names unknown document 'p9'"),
    (_r2med_broken("qrels", 0, score="high"), "qrels", 1, "score 'high' is not a number"),
    (_r2med_broken("qrels", 0, score=None), "qrels", 1, "missing field(s) ['score']"),
    (_r2med_broken("corpus", 1, id="p1"), "corpus", 2, "duplicate id 'p1'"),
    (_r2med_broken("query", 1, text=""), "query", 2, "empty text"),
])
def test_r2med_bad_rows_name_config_and_row(tmp_path, tables, config, row, message):
    source = write_r2med(tmp_path / "Biology", tables)
    with pytest.raises(DataError) as err:
        load_r2med("Biology", source=source)
    assert f"config '{config}' split '{config}': row {row}: {message}" in str(err.value)


def test_folders_sharing_a_name_or_edited_are_not_served_stale_rows(tmp_path):
    # datasets alone would cache both "Biology" folders under one key and return the first one's rows.
    first = write_r2med(tmp_path / "a" / "Biology")
    second = write_r2med(tmp_path / "b" / "Biology", _r2med_broken("query", 0, text="Why do knees creak?"))
    assert load_r2med("Biology", source=first).queries["0"] == "Why does my knee click?"
    assert load_r2med("Biology", source=second).queries["0"] == "Why do knees creak?"
    write_r2med(Path(first), _r2med_broken("query", 0, text="Edited in place, a little longer"))
    assert load_r2med("Biology", source=first).queries["0"] == "Edited in place, a little longer"


def test_missing_data_file_in_a_local_folder(tmp_path):
    source = write_r2med(tmp_path / "Biology")
    (Path(source) / "corpus.jsonl").unlink()
    with pytest.raises(DataError, match="config 'corpus'"):
        load_r2med("Biology", source=source)


def read_demo(name: str) -> list[dict]:
    if not R2MED_DEMO.is_dir():
        pytest.skip(f"no R2MED demo rows at {R2MED_DEMO}")
    return [json.loads(line) for line in (R2MED_DEMO / f"{name}.jsonl").read_text().splitlines() if line.strip()]


def test_r2med_demo_rows(tmp_path):
    tables = {name: read_demo(name) for name in ("query", "corpus", "qrels")}
    # The demo is an excerpt: its judgments name documents its two corpus rows do not hold.
    with pytest.raises(DataError, match=r"config 'qrels' split 'qrels': row 1: judgment names unknown document "
                                        r"'insects_attracted_to_light/Phototaxis_3.txt'"):
        load_r2med("Biology", source=write_r2med(tmp_path / "excerpt", tables))

    judged = [row["p_id"] for row in tables["qrels"]]
    tables["corpus"] += [{"id": doc_id, "text": f"stand-in for {doc_id}"} for doc_id in judged]
    collection = load_r2med("Biology", source=write_r2med(tmp_path / "Biology", tables))
    assert len(collection.queries) == 2 and len(collection.docs) == 4
    assert collection.queries["0"].startswith("Claim in article about why insects are attracted to light\nIn this article")
    assert collection.docs["neanderthals_vitamin_C_diet/Neanderthal_0_43.txt"].startswith("pelvises; and proportionally")
    assert collection.qrels == {"0": {"insects_attracted_to_light/Phototaxis_3.txt": 1,
                                      "insects_attracted_to_light/Proximate_and_ultimate_causation_0.txt": 1}}
    assert collection.judged_queries() == ["0"]
    perfect = {"0": {judged[0]: 2.0, judged[1]: 1.0, "neanderthals_vitamin_C_diet/Neanderthal_0_43.txt": 0.5}}
    assert evaluate(perfect, collection)["nDCG@10"] == pytest.approx(1.0)


# --- the hub itself is off in tests -----------------------------------------------------------

@pytest.mark.skipif(not hub_offline(), reason="only meaningful with the hub switched off (the default)")
@pytest.mark.parametrize("spec", ["bright:biology", "r2med:Biology"])
def test_hub_id_while_offline_says_how_to_go_online(spec):
    with pytest.raises(HubOfflineError, match="GROUPRANK_ONLINE=1"):
        load_collection(spec)


def test_load_collection_reads_a_local_hub_shaped_folder(bright_repo, tmp_path):
    from grouprank_mini.data import load_collection

    assert load_collection("bright:biology", root=bright_repo).docs == load_bright("biology", source=bright_repo).docs
    r2med = load_collection("r2med:Medical-Sciences", root=write_r2med(tmp_path / "Medical-Sciences"))
    assert r2med.name == "r2med:Medical-Sciences" and r2med.qrels


def test_a_preset_names_a_local_folder_with_at(bright_repo, tmp_path):
    from grouprank_mini.data import load_collection

    by_spec = load_collection(f"bright:biology@{bright_repo}")
    assert by_spec.docs == load_bright("biology", source=bright_repo).docs and by_spec.name == "bright:biology"
    folder = write_r2med(tmp_path / "Medical-Sciences")
    assert load_collection(f"r2med:Medical-Sciences@{folder}").qrels == load_r2med("Medical-Sciences", source=folder).qrels


def test_a_string_root_works_for_classic_collections():
    from grouprank_mini.data import load_collection
    from grouprank_mini.runtime import data_dir

    assert len(load_collection("adi", root=str(data_dir())).docs) == 82
