"""Loaders for the local collections (SMART, TREC, BEIR) and the query split."""
from __future__ import annotations

import json

import pytest

from grouprank_mini.data import Collection, DataError, load_collection, read_smart, split_queries

# name: (docs, queries, judged queries, stored judgments), from the collections' README
COUNTS = {
    "cranfield": (1398, 225, 225, 1836),  # 1400 - 2 empty docs; 1837 - the judgment of empty doc 995
    "cisi": (1460, 112, 76, 3114),
    "adi": (82, 35, 35, 170),
    "vaswani": (11429, 93, 93, 2083),
}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_local_collection_counts(name, collections):
    collection = collections[name]
    n_docs, n_queries, n_judged, n_judgments = COUNTS[name]
    assert len(collection.docs) == n_docs
    assert len(collection.queries) == n_queries
    assert len(collection.judged_queries()) == n_judged
    assert sum(len(rels) for rels in collection.qrels.values()) == n_judgments
    assert collection.name == name


def test_cranfield_reports_what_it_skipped():
    with pytest.warns(UserWarning, match="3 item"):
        collection = load_collection("cranfield")
    assert "471" not in collection.docs and "995" not in collection.docs
    assert len(collection.skipped) == 3
    assert "cran.all.1400:13470: document 471" in collection.skipped[0]
    assert "cran.all.1400:27712: document 995" in collection.skipped[1]
    assert "cranqrel:991: judgment for skipped document 995" in collection.skipped[2]


def test_cranfield_query_ids_follow_file_position(cranfield):
    # cran.qry numbers these .I 001, .I 004 and .I 365; cranqrel calls them 1, 3 and 225.
    assert cranfield.queries["1"].startswith("what similarity laws must be obeyed")
    assert cranfield.queries["3"] == "what problems of heat conduction in composite slabs have been solved so far ."
    assert cranfield.queries["225"].startswith("what design factors can be used to control lift-drag ratios")
    assert "365" not in cranfield.queries


def test_cranfield_gain_is_five_minus_code(cranfield):
    # cranqrel rows: "1 184 2", "1 12 3", "2 12 1", "1 486 -1", "225 1188 -1"
    assert cranfield.qrels["1"]["184"] == 3
    assert cranfield.qrels["1"]["12"] == 2
    assert cranfield.qrels["2"]["12"] == 4
    assert cranfield.qrels["1"]["486"] == 0
    assert cranfield.qrels["225"]["1188"] == 0
    assert {g for rels in cranfield.qrels.values() for g in rels.values()} == {0, 1, 2, 3, 4}


def test_binary_collections_have_gain_one(cisi, adi, vaswani):
    assert cisi.qrels["1"]["28"] == 1
    assert adi.qrels["1"]["17"] == 1 and adi.qrels["2"]["71"] == 1
    assert vaswani.qrels["1"]["1239"] == 1
    for collection in (cisi, adi, vaswani):
        assert {g for rels in collection.qrels.values() for g in rels.values()} == {1}


def test_document_text_is_title_plus_body(adi, vaswani):
    # ADI.ALL record 1: a three-line .T, an .A (author, not indexed), then .W
    assert adi.docs["1"].startswith("the ibm dsd technical information center - a total systems approach")
    assert "computer processing the ibm data systems division technical information center" in adi.docs["1"]
    assert "WHITE" not in adi.docs["1"]
    assert vaswani.docs["1"].startswith("compact memories have flexible capacities")
    assert "\n" not in vaswani.docs["1"] and "  " not in vaswani.docs["1"]


# --- SMART parsing on small files written here --------------------------------------------

def write_adi(root, all_text: str, qry_text: str = ".I 1\n.W\nfirst query\n", rel_text: str = "1 1 0 0.0\n"):
    folder = root / "adi"
    folder.mkdir(exist_ok=True)
    (folder / "ADI.ALL").write_text(all_text)
    (folder / "ADI.QRY").write_text(qry_text)
    (folder / "ADI.REL").write_text(rel_text)
    return folder


def test_smart_skips_unknown_field_letters(tmp_path):
    all_text = (
        ".I 1\n.T\nGas dynamics\n.N\nnote that must not be indexed\n.K\nkeyword\n"
        ".W\nshock waves\nin tubes\n.C\nclass code\n"
        ".I 2\n.T Heat\n.X\n1 5 1\n.W\nconduction\n"
    )
    write_adi(tmp_path, all_text)
    collection = load_collection("adi", root=tmp_path)
    assert collection.docs == {"1": "Gas dynamics shock waves in tubes", "2": "Heat conduction"}
    records = read_smart(tmp_path / "adi" / "ADI.ALL")
    assert [(doc_id, line) for doc_id, _, line in records] == [("1", 1), ("2", 13)]
    assert records[0][1]["N"].strip() == "note that must not be indexed"


def assert_data_error(error_info, file_name: str, line: int | None):
    message = str(error_info.value)
    assert file_name in message
    if line is not None:
        assert f"{file_name}:{line}:" in message


def test_duplicate_document_id_names_file_and_line(tmp_path):
    write_adi(tmp_path, ".I 1\n.W\none\n.I 2\n.W\ntwo\n.I 1\n.W\nagain\n")
    with pytest.raises(DataError, match="duplicate document id 1") as err:
        load_collection("adi", root=tmp_path)
    assert_data_error(err, "ADI.ALL", 7)


def test_judgment_for_unknown_query_names_file_and_line(tmp_path):
    write_adi(tmp_path, ".I 1\n.W\none\n", rel_text="1 1 0 0.0\n9 1 0 0.0\n")
    with pytest.raises(DataError, match="unknown query 9") as err:
        load_collection("adi", root=tmp_path)
    assert_data_error(err, "ADI.REL", 2)


def test_judgment_for_unknown_document_names_file_and_line(tmp_path):
    write_adi(tmp_path, ".I 1\n.W\none\n", rel_text="\n1 1 0 0.0\n1 42 0 0.0\n")
    with pytest.raises(DataError, match="unknown document 42") as err:
        load_collection("adi", root=tmp_path)
    assert_data_error(err, "ADI.REL", 3)


def test_unreadable_file_is_named(tmp_path):
    folder = write_adi(tmp_path, ".I 1\n.W\none\n")
    (folder / "ADI.QRY").unlink()
    with pytest.raises(DataError, match="cannot read file") as err:
        load_collection("adi", root=tmp_path)
    assert_data_error(err, "ADI.QRY", None)


def test_query_without_text_names_file_and_line(tmp_path):
    write_adi(tmp_path, ".I 1\n.W\none\n", qry_text=".I 1\n.W\nfine\n.I 2\n.T\nonly a title\n")
    with pytest.raises(DataError, match="query 2 has no .W text") as err:
        load_collection("adi", root=tmp_path)
    assert_data_error(err, "ADI.QRY", 4)


def test_bad_cranfield_code_names_file_and_line(tmp_path):
    folder = tmp_path / "cranfield"
    folder.mkdir()
    (folder / "cran.all.1400").write_text(".I 1\n.T\ntitle\n.W\nbody\n")
    (folder / "cran.qry").write_text(".I 001\n.W\nquery\n")
    (folder / "cranqrel").write_text("1 1 2\n1 1 7\n")
    with pytest.raises(DataError, match="relevance code 7") as err:
        load_collection("cranfield", root=tmp_path)
    assert_data_error(err, "cranqrel", 2)


# --- BEIR folders ------------------------------------------------------------------------------

def write_beir(folder, corpus: list, queries: list, qrels_lines: list[str]):
    (folder / "qrels").mkdir(parents=True)
    for name, rows in (("corpus.jsonl", corpus), ("queries.jsonl", queries)):
        (folder / name).write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{line}\n" for line in qrels_lines))
    return folder


CORPUS = [{"_id": "d1", "title": "Shock", "text": "waves in tubes"}, {"_id": "d2", "text": "heat  conduction"},
          {"_id": "d3", "title": None, "text": "lift and drag"}]
QUERIES = [{"_id": "q1", "text": "shock waves"}, {"_id": "q2", "text": "heat"}, {"_id": "q3", "text": "unjudged"}]


def test_beir_folder_loads(tmp_path):
    folder = write_beir(tmp_path / "toy", CORPUS, QUERIES, ["q1\td1\t2", "q1\td2\t0", "q2\td2\t1"])
    collection = load_collection(f"beir:{folder}")
    assert collection.name == "beir:toy"
    assert collection.docs == {"d1": "Shock waves in tubes", "d2": "heat conduction", "d3": "lift and drag"}
    assert collection.queries["q2"] == "heat"
    assert collection.qrels == {"q1": {"d1": 2, "d2": 0}, "q2": {"d2": 1}}
    assert collection.judged_queries() == ["q1", "q2"]


def test_beir_malformed_json_names_file_and_line(tmp_path):
    folder = write_beir(tmp_path / "toy", [CORPUS[0], '{"_id": "d2", "text": ', CORPUS[2]], QUERIES, [])
    with pytest.raises(DataError, match="not valid JSON") as err:
        load_collection(f"beir:{folder}")
    assert_data_error(err, "corpus.jsonl", 2)


def test_beir_missing_field_names_file_and_line(tmp_path):
    folder = write_beir(tmp_path / "toy", CORPUS, [QUERIES[0], {"_id": "q2"}], [])
    with pytest.raises(DataError, match="missing field") as err:
        load_collection(f"beir:{folder}")
    assert_data_error(err, "queries.jsonl", 2)


@pytest.mark.parametrize("bad_row, message", [('{"_id": "q2", "text": null}', "missing field"),
                                              ('["q2", "text"]', "not a JSON object")])
def test_beir_null_text_or_non_object_row(tmp_path, bad_row, message):
    folder = write_beir(tmp_path / "toy", CORPUS, [QUERIES[0], QUERIES[1], bad_row], [])
    with pytest.raises(DataError, match=message) as err:
        load_collection(f"beir:{folder}")
    assert_data_error(err, "queries.jsonl", 3)


def test_beir_duplicate_id_names_file_and_line(tmp_path):
    folder = write_beir(tmp_path / "toy", CORPUS + [CORPUS[0]], QUERIES, [])
    with pytest.raises(DataError, match="duplicate id 'd1'") as err:
        load_collection(f"beir:{folder}")
    assert_data_error(err, "corpus.jsonl", 4)


def test_beir_judgment_for_unknown_document(tmp_path):
    folder = write_beir(tmp_path / "toy", CORPUS, QUERIES, ["q1\td1\t1", "q1\tnope\t1"])
    with pytest.raises(DataError, match="unknown document nope") as err:
        load_collection(f"beir:{folder}")
    assert_data_error(err, "test.tsv", 3)  # line 1 is the header


# --- query splits ---------------------------------------------------------------------------

def test_split_is_deterministic_disjoint_and_complete(cranfield):
    split = split_queries(cranfield, seed=13, test_fraction=0.25, dev_fraction=0.1)
    assert split == split_queries(cranfield, seed=13, test_fraction=0.25, dev_fraction=0.1)
    assert split != split_queries(cranfield, seed=14, test_fraction=0.25, dev_fraction=0.1)
    assert (len(split.test), len(split.dev), len(split.train)) == (56, 22, 147)  # round(56.25), round(22.5)
    train, dev, test = set(split.train), set(split.dev), set(split.test)
    assert not train & test and not train & dev and not dev & test
    assert train | dev | test == set(cranfield.judged_queries())


def test_split_uses_judged_queries_only(cisi):
    split = split_queries(cisi, seed=0, test_fraction=0.5, dev_fraction=0.0)
    everything = split.train + split.dev + split.test
    assert len(everything) == 76 and set(everything) <= set(cisi.judged_queries())
    assert split.dev == [] and len(split.test) == 38


def test_split_ignores_query_order(toy):
    shuffled = Collection("toy", toy.docs, dict(reversed(list(toy.queries.items()))), toy.qrels)
    assert split_queries(toy, 3, 0.5, 0.0) == split_queries(shuffled, 3, 0.5, 0.0)


def test_thread_count_comes_from_the_environment_or_the_preset(monkeypatch):
    from grouprank_mini import get_preset, runtime

    preset = get_preset("cpu")
    monkeypatch.delenv("GROUPRANK_THREADS", raising=False)
    assert runtime.threads(preset) == preset.threads
    monkeypatch.setenv("GROUPRANK_THREADS", "1")
    assert runtime.threads(preset) == 1
    monkeypatch.setenv("GROUPRANK_THREADS", "two")
    with pytest.raises(ValueError, match="GROUPRANK_THREADS"):
        runtime.threads(preset)
