"""BRIGHT and R2MED loaders, on folders written here exactly as the hub repositories lay them out
(tests/hub_folders.py), and on the ways such folders arrive damaged."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
from hub_folders import BRIGHT, R2MED, write_bright, write_hub_repo, write_r2med

from grouprank_mini.data import Collection, DataError, load_collection
from grouprank_mini.evaluate import evaluate
from grouprank_mini.hubdata import HubOfflineError, hub_offline, load_bright, load_r2med
from grouprank_mini.runtime import KitWarning


@pytest.fixture
def bright_repo(tmp_path) -> str:
    return write_bright(tmp_path / "BRIGHT")


# --- BRIGHT: configs examples / documents / long_documents, one split per domain ------------------

def test_bright_documents_gold_ids_and_excluded(bright_repo):
    collection = load_bright("biology", source=bright_repo)
    assert collection.name == "bright:biology"
    assert collection.docs == {f"d{i}": f"biology passage {i}" for i in range(1, 6)}
    assert collection.queries == {"0": "Why do moths fly towards light?", "1": "How do plant roots sense gravity?",
                                  "2": "Why is blood red?"}
    assert collection.qrels == {"0": {"d1": 1, "d2": 1}, "1": {"d3": 1}, "2": {"d2": 1}}
    assert collection.excluded == {"1": {"d1"}}  # "N/A" is a placeholder, not an id


def _with(tables, config: str, split: str, row: int, **changes) -> dict:
    tables = copy.deepcopy(tables)
    tables[(config, split)][row].update(changes)
    return tables


def test_bright_long_documents_use_gold_ids_long(tmp_path):
    # excluded_ids must name documents of the variant loaded: here a long document
    source = write_bright(tmp_path / "BRIGHT", _with(BRIGHT, "examples", "biology", 1, excluded_ids=["L3"]))
    collection = load_bright("biology:long", source=source)
    assert collection.name == "bright:biology:long"
    assert sorted(collection.docs) == ["L1", "L2", "L3"]
    assert collection.docs["L1"] == "long biology page 1\n  second line"  # line breaks kept (code documents)
    assert collection.qrels == {"0": {"L1": 1}, "1": {"L2": 1}, "2": {"L1": 1}}
    assert collection.excluded == {"1": {"L3"}}


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


EXAMPLES, DOCUMENTS = "examples/biology-00000-of-00001.parquet", "documents/biology-00000-of-00001.parquet"


@pytest.mark.parametrize("tables, file, row, message", [
    (_with(BRIGHT, "examples", "biology", 1, query=None), EXAMPLES, 2, "missing field(s) ['query']"),
    (_with(BRIGHT, "examples", "biology", 0, excluded_ids=None), EXAMPLES, 1, "missing field(s) ['excluded_ids']"),
    (_with(BRIGHT, "examples", "biology", 2, gold_ids=["nope"]), EXAMPLES, 3, "gold_ids names unknown document(s) ['nope']"),
    (_with(BRIGHT, "examples", "biology", 2, id="0"), EXAMPLES, 3, "duplicate id '0'"),
    (_with(BRIGHT, "documents", "biology", 1, content="   "), DOCUMENTS, 2, "empty content"),
    (_with(BRIGHT, "documents", "biology", 3, id="d1"), DOCUMENTS, 4, "duplicate id 'd1'"),
])
def test_bright_bad_rows_name_file_and_row(tmp_path, tables, file, row, message):
    source = write_bright(tmp_path / "BRIGHT", tables)
    with pytest.raises(DataError) as err:
        load_bright("biology", source=source)
    assert f"{file}: row {row}: {message}" in str(err.value)


# BRIGHT's evaluation asserts that no gold id is excluded and pops every excluded id from the
# scores of all documents (a KeyError for an id that names none): a copy breaking either is damaged.
@pytest.mark.parametrize("excluded, message", [
    (["d3"], "excluded_ids and gold_ids share ['d3']"),
    (["d9"], "excluded_ids names unknown document(s) ['d9']"),
])
def test_bright_exclusions_are_checked_as_brights_evaluation_does(tmp_path, excluded, message):
    source = write_bright(tmp_path / "BRIGHT", _with(BRIGHT, "examples", "biology", 1, excluded_ids=excluded))
    with pytest.raises(DataError) as err:
        load_bright("biology", source=source)
    assert f"{EXAMPLES}: row 2: {message}" in str(err.value)


def test_bright_long_variant_rejects_an_exclusion_naming_a_short_document(bright_repo):
    with pytest.raises(DataError, match=r"row 2: excluded_ids names unknown document\(s\) \['d1'\]"):
        load_bright("biology:long", source=bright_repo)


def test_bright_unknown_domain_or_spec(bright_repo):
    with pytest.raises(DataError, match=r"README.md: config 'documents' has no split 'physics' \(it has \['biology', "):
        load_bright("physics", source=bright_repo)
    with pytest.raises(ValueError, match="'<domain>:long'"):
        load_bright("biology:short", source=bright_repo)


def test_bright_empty_documents_table(tmp_path):
    tables = copy.deepcopy(BRIGHT)
    tables[("documents", "biology")] = []
    source = write_bright(tmp_path / "BRIGHT", tables)
    with pytest.raises(DataError, match=f"{DOCUMENTS}: holds no rows"):
        load_bright("biology", source=source)


def test_bright_damaged_parquet_names_the_file(bright_repo):
    path = Path(bright_repo) / DOCUMENTS
    path.write_bytes(path.read_bytes()[:-40])  # the footer is gone
    with pytest.raises(DataError, match=f"{DOCUMENTS}: not a readable parquet file"):
        load_bright("biology", source=bright_repo)


# --- R2MED: configs query / corpus / qrels, each with one split named after it --------------------

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


def _r2med_with(config: str, row: int, **changes) -> dict:
    tables = copy.deepcopy(R2MED)
    tables[config][row].update(changes)
    return tables


@pytest.mark.parametrize("tables, config, row, message", [
    (_r2med_with("qrels", 1, q_id="9"), "qrels", 2, "judgment names unknown query '9' (not in "),
    (_r2med_with("qrels", 2, p_id="p9"), "qrels", 3, "judgment names unknown document 'p9' (not in "),
    (_r2med_with("qrels", 0, score="high"), "qrels", 1, "score: grade 'high' is not a number"),
    (_r2med_with("qrels", 0, score=None), "qrels", 1, "missing field(s) ['score']"),
    (_r2med_with("qrels", 0, score=float("inf")), "qrels", 1, "score: grade inf is not a finite number"),
    (_r2med_with("qrels", 0, score=0.5), "qrels", 1, "score: grade 0.5 is not a whole number"),
    (_r2med_with("corpus", 1, id="p1"), "corpus", 2, "duplicate id 'p1'"),
    (_r2med_with("query", 1, text=""), "query", 2, "empty text"),
])
def test_r2med_bad_rows_name_file_and_line(tmp_path, tables, config, row, message):
    source = write_r2med(tmp_path / "Biology", tables)
    with pytest.raises(DataError) as err:
        load_r2med("Biology", source=source)
    assert f"{config}.jsonl:{row}: {message}" in str(err.value)


def test_r2med_unknown_document_names_the_corpus_file(tmp_path):
    source = write_r2med(tmp_path / "Biology", _r2med_with("qrels", 2, p_id="p9"))
    with pytest.raises(DataError, match=r"qrels.jsonl:3: .* \(not in .*corpus.jsonl\)"):
        load_r2med("Biology", source=source)


def test_r2med_duplicate_and_negative_judgments_warn(tmp_path):
    tables = copy.deepcopy(R2MED)
    tables["qrels"] += [{"q_id": "1", "p_id": "p2", "score": 1}, {"q_id": "1", "p_id": "p4", "score": -1}]
    source = write_r2med(tmp_path / "Biology", tables)
    with pytest.warns(KitWarning) as caught:
        collection = load_r2med("Biology", source=source)
    messages = [str(w.message) for w in caught]
    assert any("1 duplicate judgment(s), the later grade kept; first: " in m and "qrels.jsonl:4" in m for m in messages)
    assert any("1 negative grade(s) read as 0" in m and "qrels.jsonl:5" in m for m in messages)
    assert collection.qrels["1"] == {"p2": 1, "p3": 1, "p4": 0}


def test_folders_sharing_a_name_or_edited_are_not_served_stale_rows(tmp_path):
    first = write_r2med(tmp_path / "a" / "Biology")
    second = write_r2med(tmp_path / "b" / "Biology", _r2med_with("query", 0, text="Why do knees creak?"))
    assert load_r2med("Biology", source=first).queries["0"] == "Why does my knee click?"
    assert load_r2med("Biology", source=second).queries["0"] == "Why do knees creak?"
    write_r2med(Path(first), _r2med_with("query", 0, text="Edited in place, a little longer"))
    assert load_r2med("Biology", source=first).queries["0"] == "Edited in place, a little longer"


def test_missing_data_file_in_a_local_folder(tmp_path):
    source = write_r2med(tmp_path / "Biology")
    (Path(source) / "corpus.jsonl").unlink()
    with pytest.raises(DataError, match=r"README.md: config 'corpus': Unable to find .*corpus.jsonl"):
        load_r2med("Biology", source=source)


# --- a sample in R2MED's own layout: three plain jsonl files, no README ------------------------------

# Shaped like an R2MED Biology excerpt: queries with their doc lists, two corpus rows, and
# judgments that name documents the excerpt's corpus does not hold.
SAMPLE = {
    "query": [{"id": "0", "text": "Claim in article about why insects are attracted to light\nIn this article ...",
               "doc_id": ["insects/Phototaxis_3.txt", "insects/Causation_0.txt"], "answer": "...", "body_system": ""},
              {"id": "1", "text": "Why do I only breathe out of one nostril?", "doc_id": ["nostril/Nasal_cycle_3.txt"],
               "answer": "...", "body_system": ""}],
    "corpus": [{"id": "neanderthals/Neanderthal_0_43.txt", "text": " pelvises; and proportionally shorter forearms"},
               {"id": "neanderthals/Neanderthal_0_119.txt", "text": " Gorham's Cave, Gibraltar, were discovered"}],
    "qrels": [{"q_id": "0", "p_id": "insects/Phototaxis_3.txt", "score": 1},
              {"q_id": "0", "p_id": "insects/Causation_0.txt", "score": 1}],
}


def test_r2med_sample_layout_without_readme(tmp_path):
    excerpt = write_r2med(tmp_path / "excerpt", SAMPLE, readme=False)
    assert not (Path(excerpt) / "README.md").exists()
    # the excerpt is read (no "BuilderConfig not found"); its judgments name documents it lacks
    with pytest.raises(DataError, match=r"qrels.jsonl:1: judgment names unknown document 'insects/Phototaxis_3.txt' "
                                        r"\(not in .*excerpt/corpus.jsonl\); 1 more"):
        load_r2med("Biology", source=excerpt)

    tables = copy.deepcopy(SAMPLE)
    tables["corpus"] += [{"id": row["p_id"], "text": f"stand-in for {row['p_id']}"} for row in SAMPLE["qrels"]]
    collection = load_collection(f"r2med:Biology@{write_r2med(tmp_path / 'Biology', tables, readme=False)}")
    assert len(collection.queries) == 2 and len(collection.docs) == 4
    assert collection.queries["0"].startswith("Claim in article about why insects are attracted to light\nIn this")
    assert collection.docs["neanderthals/Neanderthal_0_43.txt"] == "pelvises; and proportionally shorter forearms"
    assert collection.qrels == {"0": {"insects/Phototaxis_3.txt": 1, "insects/Causation_0.txt": 1}}
    assert collection.judged_queries() == ["0"]
    perfect = {"0": {"insects/Phototaxis_3.txt": 2.0, "insects/Causation_0.txt": 1.0}}
    assert evaluate(perfect, collection)["nDCG@10"] == pytest.approx(1.0)


# --- damaged local folders -----------------------------------------------------------------------

def test_folder_without_configs_block_says_what_the_readme_needs(tmp_path):
    source = write_bright(tmp_path / "BRIGHT")
    (Path(source) / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n# BRIGHT\n")
    with pytest.raises(DataError) as err:
        load_bright("biology", source=source)
    message = str(err.value)
    assert "README.md: has no YAML configs: block, so the data files of config 'documents' are unknown" in message
    assert "configs:\n- config_name: documents\n  data_files:\n  - split: <split>\n" in message
    (Path(source) / "README.md").unlink()
    with pytest.raises(DataError, match="README.md: is missing, so the data files of config 'documents'"):
        load_bright("biology", source=source)


def test_unreadable_readme_header(tmp_path):
    source = write_bright(tmp_path / "BRIGHT")
    (Path(source) / "README.md").write_text("---\nconfigs: [\n---\n")
    with pytest.raises(DataError, match="README.md: its YAML header cannot be read"):
        load_bright("biology", source=source)


@pytest.mark.parametrize("content, line, message", [
    (b'{"id": "0", "text": "a"}\n{"id": "1", "text": "b"}\n{"id": "2", "te', 3,
     "not valid JSON (Unterminated string starting at); the file ends inside this line: is it truncated?"),
    (b'{"id": "0", "text": "caf\xe9"}\n', 1, "byte 0xe9 is not UTF-8"),
    (b'{"id": "0", "text": "a"}\n[1, 2]\n', 2, "not a JSON object"),
])
def test_damaged_hub_jsonl_names_file_and_line(tmp_path, content, line, message):
    source = write_r2med(tmp_path / "Biology")
    (Path(source) / "query.jsonl").write_bytes(content)
    with pytest.raises(DataError) as err:
        load_r2med("Biology", source=source)
    assert f"query.jsonl:{line}: {message}" in str(err.value)


@pytest.mark.parametrize("content", [b"", b"\n\n"])
def test_empty_hub_jsonl(tmp_path, content):
    source = write_r2med(tmp_path / "Biology")
    (Path(source) / "corpus.jsonl").write_bytes(content)
    with pytest.raises(DataError, match="corpus.jsonl: holds no rows"):
        load_r2med("Biology", source=source)


def test_hub_jsonl_with_a_byte_order_mark(tmp_path):
    source = write_r2med(tmp_path / "Biology")
    path = Path(source) / "query.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert list(load_r2med("Biology", source=source).queries) == ["0", "1"]


def test_a_mistyped_local_folder_is_not_taken_for_a_hub_dataset(tmp_path):
    missing = tmp_path / "BRIGTH"
    with pytest.raises(DataError, match=f"{missing}: no such folder"):
        load_collection(f"bright:biology@{missing}")
    with pytest.raises(DataError, match="no such folder"):
        load_bright("biology", source=str(missing))
    with pytest.raises(DataError, match="no such folder"):
        load_r2med("Biology", source="./Biology")
    with pytest.raises(ValueError, match="the folder is missing"):
        load_collection("bright:biology@")


def test_a_file_as_source_is_reported_as_a_file(tmp_path, bright_repo):
    path = Path(bright_repo) / "README.md"
    with pytest.raises(DataError, match=f"{path}: is a file; a local source is a folder"):
        load_bright("biology", source=str(path))
    with pytest.raises(DataError, match="is a file"):
        load_collection(f"r2med:Biology@{path}")


def test_unsupported_data_file_type(tmp_path):
    source = write_hub_repo(tmp_path / "R", {("query", "query"): ("query.csv", [])})
    (Path(source) / "query.csv").write_text("id,text\n0,a\n")
    with pytest.raises(DataError, match=r"query.csv: cannot read .csv files"):
        load_r2med("Biology", source=source)


# --- the hub itself is off in tests -----------------------------------------------------------

@pytest.mark.skipif(not hub_offline(), reason="only meaningful with the hub switched off (the default)")
@pytest.mark.parametrize("spec", ["bright:biology", "r2med:Biology"])
def test_hub_id_while_offline_says_how_to_go_online(spec):
    with pytest.raises(HubOfflineError, match="GROUPRANK_ONLINE=1"):
        load_collection(spec)


def test_load_collection_reads_a_local_hub_shaped_folder(bright_repo, tmp_path):
    assert load_collection("bright:biology", root=bright_repo).docs == load_bright("biology", source=bright_repo).docs
    r2med = load_collection("r2med:Medical-Sciences", root=write_r2med(tmp_path / "Medical-Sciences"))
    assert r2med.name == "r2med:Medical-Sciences" and r2med.qrels


def test_a_preset_names_a_local_folder_with_at(bright_repo, tmp_path):
    by_spec = load_collection(f"bright:biology@{bright_repo}")
    assert by_spec.docs == load_bright("biology", source=bright_repo).docs and by_spec.name == "bright:biology"
    folder = write_r2med(tmp_path / "Medical-Sciences")
    assert load_collection(f"r2med:Medical-Sciences@{folder}").qrels == load_r2med("Medical-Sciences", source=folder).qrels


def test_a_string_root_works_for_classic_collections():
    from grouprank_mini.runtime import data_dir

    assert len(load_collection("adi", root=str(data_dir())).docs) == 82


def test_rows_keep_their_json_types(tmp_path):
    # ids written as numbers are read as the same strings the hub's string columns give
    tables = copy.deepcopy(R2MED)
    tables["query"][0]["id"], tables["qrels"][0]["q_id"] = 0, 0
    source = write_r2med(tmp_path / "Biology", tables)
    assert load_r2med("Biology", source=source).qrels["0"] == {"p1": 1}
    assert json.loads((Path(source) / "query.jsonl").read_text().splitlines()[0])["id"] == 0
