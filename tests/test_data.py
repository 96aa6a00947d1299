"""Loaders for the local collections (SMART, TREC, BEIR) and the query split, on the real
collections and on small files written here the way outside data arrives damaged."""
from __future__ import annotations

import hashlib
import json
import time
import warnings

import pytest

from grouprank_mini.data import (SMART_PRESETS, Collection, DataError, SmartFormat, load_collection, load_smart,
                                 read_smart, split_queries)
from grouprank_mini.runtime import KitWarning, data_dir

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


# sha256 of (docs, queries, qrels) in load order: the loaders must keep reading these exactly so.
DIGESTS = {"cranfield": "63db6f06ca68f23e", "cisi": "53f0758cce6e146f", "adi": "05998463976d6853",
           "vaswani": "ecdae81cfbaccb51"}


def digest(collection: Collection) -> str:
    content = [list(collection.docs.items()), list(collection.queries.items()),
               [(q, list(rels.items())) for q, rels in collection.qrels.items()]]
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(DIGESTS))
def test_named_collections_read_exactly_as_before(name, collections):
    assert digest(collections[name]) == DIGESTS[name]


@pytest.mark.parametrize("name", sorted(SMART_PRESETS))
def test_named_smart_collections_are_presets_of_the_smart_spec(name, collections):
    folder = data_dir() / name
    options = "&".join(f"{key}={value}" for key, value in vars(SMART_PRESETS[name]).items())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KitWarning)
        by_spec = load_collection(f"smart:{folder}?{options}")
    assert by_spec.name == f"smart:{name}"
    assert digest(by_spec) == DIGESTS[name]


# ir_datasets' download of each collection it covers (it is not a kit dependency).
IR_DATASETS = {"cranfield": "cran.tar.gz", "vaswani": "npl.tar.gz"}


@pytest.mark.parametrize("name", sorted(IR_DATASETS))
def test_counts_agree_with_ir_datasets(name, collections):
    ir_datasets = pytest.importorskip("ir_datasets", reason="ir_datasets is not installed (the kit does not need it)")
    if not (ir_datasets.util.home_path() / name / IR_DATASETS[name]).exists():
        pytest.skip(f"ir_datasets has no offline copy of {name}: it would download it, and tests stay offline")
    dataset, collection = ir_datasets.load(name), collections[name]
    left_out = sum(" has no " in note for note in collection.skipped)  # empty documents, left out
    dropped = sum("judgment for skipped" in note for note in collection.skipped)
    assert len(collection.docs) + left_out == sum(1 for _ in dataset.docs_iter())
    assert len(collection.queries) == sum(1 for _ in dataset.queries_iter())
    assert sum(map(len, collection.qrels.values())) + dropped == sum(1 for _ in dataset.qrels_iter())


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
    with pytest.raises(DataError, match="unknown query '9'") as err:
        load_collection("adi", root=tmp_path)
    assert_data_error(err, "ADI.REL", 2)


def test_judgment_for_unknown_document_names_file_and_line(tmp_path):
    write_adi(tmp_path, ".I 1\n.W\none\n", rel_text="\n1 1 0 0.0\n1 42 0 0.0\n")
    with pytest.raises(DataError, match="unknown document '42'") as err:
        load_collection("adi", root=tmp_path)
    assert_data_error(err, "ADI.REL", 3)


def test_unreadable_file_is_named(tmp_path):
    folder = write_adi(tmp_path, ".I 1\n.W\none\n")
    (folder / "ADI.QRY").unlink()
    with pytest.raises(DataError, match="cannot read file") as err:
        load_collection("adi", root=tmp_path)
    assert_data_error(err, "ADI.QRY", None)


def test_query_without_text_names_file_and_line(tmp_path):
    # before the last record: damage (the last one may be an empty end marker, see below)
    write_adi(tmp_path, ".I 1\n.W\none\n", qry_text=".I 1\n.W\nfine\n.I 2\n.T\nonly a title\n.I 3\n.W\nthird\n")
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


def test_trailing_empty_query_record_is_left_out(tmp_path):
    write_adi(tmp_path, ".I 1\n.W\none\n", qry_text=".I 1\n.W\nfine\n.I 2\n.W\n\n", rel_text="1 1\n2 1\n")
    with pytest.warns(KitWarning, match="2 item"):
        collection = load_collection("adi", root=tmp_path)
    assert collection.queries == {"1": "fine"} and collection.qrels == {"1": {"1": 1}}
    assert collection.skipped[0].endswith("ADI.QRY:4: query 2 has no text")
    assert collection.skipped[1].endswith("ADI.REL:2: judgment for skipped query 2")


def test_text_before_the_first_record_is_no_smart_file(tmp_path):
    write_adi(tmp_path, "<html>not a collection</html>\n.I 1\n.W\none\n")
    with pytest.raises(DataError, match="text before the first .I record") as err:
        load_collection("adi", root=tmp_path)
    assert_data_error(err, "ADI.ALL", 1)


# --- smart:<folder> with options ---------------------------------------------------------------

def write_med(root, rel_text: str) -> str:
    """A SMART collection the kit has no preset for: zero-padded ids, TREC-style qrels."""
    folder = root / "med"
    folder.mkdir()
    (folder / "MED.ALL").write_text(".I 001\n.W\ncorrelation of blood flow\n.I 002\n.W\nkidney function\n"
                                    ".I 003\n.W\nliver enzymes\n")
    (folder / "MED.QRY").write_text(".I 1\n.W\nblood flow\n.I 2\n.W\nkidney\n")
    (folder / "MED.REL").write_text(rel_text)
    return str(folder)


def test_smart_spec_reads_a_collection_without_preset(tmp_path):
    folder = write_med(tmp_path, "1 0 1 2\n01 0 003 0\n2 0 2 1\n")
    collection = load_collection(f"smart:{folder}?columns=q0dg&ids=int")
    assert collection.name == "smart:med"
    assert collection.docs == {"1": "correlation of blood flow", "2": "kidney function", "3": "liver enzymes"}
    assert collection.queries == {"1": "blood flow", "2": "kidney"}
    assert collection.qrels == {"1": {"1": 2, "3": 0}, "2": {"2": 1}}  # "01" and "003" are 1 and 3


def test_smart_spec_names_files_and_qrels_columns(tmp_path):
    folder = write_med(tmp_path, "")
    (tmp_path / "med" / "judged.txt").write_text("1 1\n2 2\n")
    collection = load_collection(f"smart:{folder}?qrels=judged.txt&ids=int")  # columns=qd: every pair relevant
    assert collection.qrels == {"1": {"1": 1}, "2": {"2": 1}}
    fmt = SmartFormat("MED.ALL", "MED.QRY", "judged.txt", ids="int")  # the same, from Python
    assert load_smart(tmp_path / "med", fmt, name="med").qrels == collection.qrels


def test_smart_ids_as_written_do_not_match_padded_ones(tmp_path):
    folder = write_med(tmp_path, "1 0 1 2\n")
    with pytest.raises(DataError, match="judgment names unknown document '1'") as err:
        load_collection(f"smart:{folder}?columns=q0dg")
    assert_data_error(err, "MED.REL", 1)


@pytest.mark.parametrize("options, error, message", [
    ("?colums=qdg", ValueError, r"unknown smart: option\(s\) \['colums'\]"),
    ("?columns=qq", ValueError, "columns='qq' needs one q, one d and at most one g"),
    ("?ids=number", ValueError, "ids='number': choose from"),
    ("?grades=cranfield", ValueError, "grades=cranfield needs a g column"),
    ("?columns", ValueError, "should read name=value"),
])
def test_smart_spec_bad_options(tmp_path, options, error, message):
    folder = write_med(tmp_path, "1 0 1 2\n")
    with pytest.raises(error, match=message):
        load_collection(f"smart:{folder}{options}")


def test_smart_spec_folder_and_files(tmp_path):
    with pytest.raises(ValueError, match="smart:<folder>: the folder is missing"):
        load_collection("smart:")
    with pytest.raises(DataError, match="no such folder"):
        load_collection(f"smart:{tmp_path / 'nope'}")
    folder = write_med(tmp_path, "1 0 1 2\n")
    (tmp_path / "med" / "OLD.ALL").write_text(".I 1\n.W\nold\n")
    with pytest.raises(ValueError, match=r"name the docs file with docs=<file name> \(the folder has 2 \*.ALL files"):
        load_collection(f"smart:{folder}?columns=q0dg")
    assert len(load_collection(f"smart:{folder}?docs=MED.ALL&columns=q0dg&ids=int").docs) == 3


def test_smart_int_ids_must_be_numbers(tmp_path):
    folder = write_med(tmp_path, "1 0 1x 2\n")
    with pytest.raises(DataError, match=r"cannot read judgment '1 0 1x 2' \(id '1x' is not a whole number \(ids=int\)\)"):
        load_collection(f"smart:{folder}?columns=q0dg&ids=int")


# --- what every classic loader checks the same way ---------------------------------------------

def write_vaswani(root, docs: str, queries: str = "<TOP>\n<NUM>1</NUM>\nfirst query\n</TOP>\n",
                  qrels: str = "1 0 1 1\n"):
    folder = root / "vaswani"
    (folder / "corpus").mkdir(parents=True)
    (folder / "corpus" / "doc-text.trec").write_text(docs)
    (folder / "query-text.trec").write_text(queries)
    (folder / "qrels").write_text(qrels)
    return folder


TWO_DOCS = "<DOC>\n<DOCNO>1</DOCNO>\nfirst\n</DOC>\n<DOC>\n<DOCNO>2</DOCNO>\nsecond\n</DOC>\n"


@pytest.mark.parametrize("grade, message", [
    ("inf", "grade 'inf' is not a finite number"), ("1e400", "grade '1e400' is not a finite number"),
    ("nan", "grade 'nan' is not a finite number"), ("0.5", "grade '0.5' is not a whole number"),
    ("high", "grade 'high' is not a number"),
])
def test_bad_grades_name_file_and_line(tmp_path, grade, message):
    write_vaswani(tmp_path, TWO_DOCS, qrels=f"1 0 1 1\n1 0 2 {grade}\n")
    with pytest.raises(DataError, match=message) as err:
        load_collection("vaswani", root=tmp_path)
    assert_data_error(err, "qrels", 2)


def test_whole_float_grades_are_read_as_integers(tmp_path):
    write_vaswani(tmp_path, TWO_DOCS, qrels="1 0 1 2.0\n1 0 2 1e0\n")
    assert load_collection("vaswani", root=tmp_path).qrels == {"1": {"1": 2, "2": 1}}


def test_negative_grades_are_judged_not_relevant(tmp_path):
    write_vaswani(tmp_path, TWO_DOCS, qrels="1 0 1 -1\n1 0 2 -2\n")
    with pytest.warns(KitWarning, match=r"qrels: 2 negative grade\(s\) read as 0 \(judged not relevant\); first: .*qrels:1"):
        collection = load_collection("vaswani", root=tmp_path)
    assert collection.qrels == {"1": {"1": 0, "2": 0}}


def test_duplicate_judgments_warn_and_keep_the_later_grade(tmp_path):
    write_vaswani(tmp_path, TWO_DOCS, qrels="1 0 1 1\n1 0 2 1\n1 0 1 0\n1 0 2 1\n")
    with pytest.warns(KitWarning, match=r"2 duplicate judgment\(s\), the later grade kept; first: .*qrels:3: "
                                        r"query '1', document '1' already judged at .*qrels:1"):
        collection = load_collection("vaswani", root=tmp_path)
    assert collection.qrels == {"1": {"1": 0, "2": 1}}


def test_short_judgment_line(tmp_path):
    write_vaswani(tmp_path, TWO_DOCS, qrels="1 0 1 1\n1 0\n")
    with pytest.raises(DataError, match=r"judgment '1 0' has 2 column\(s\), expected 4 \(q0dg\)") as err:
        load_collection("vaswani", root=tmp_path)
    assert_data_error(err, "qrels", 2)


def test_non_utf8_bytes_name_file_and_line(tmp_path):
    folder = write_adi(tmp_path, ".I 1\n.W\none\n")
    (folder / "ADI.ALL").write_bytes(b".I 1\n.W\ncaf\xe9 au lait\n")
    with pytest.raises(DataError, match="byte 0xe9 is not UTF-8") as err:
        load_collection("adi", root=tmp_path)
    assert_data_error(err, "ADI.ALL", 3)


def test_byte_order_mark_is_dropped(tmp_path):
    folder = write_adi(tmp_path, ".I 1\n.W\none\n")
    for name in ("ADI.ALL", "ADI.QRY", "ADI.REL"):
        (folder / name).write_bytes(b"\xef\xbb\xbf" + (folder / name).read_bytes())
    collection = load_collection("adi", root=tmp_path)
    assert collection.docs == {"1": "one"} and collection.qrels == {"1": {"1": 1}}


@pytest.mark.parametrize("empty", ["ADI.ALL", "ADI.QRY"])
def test_empty_file_is_blamed_not_the_qrels(tmp_path, empty):
    folder = write_adi(tmp_path, ".I 1\n.W\none\n")
    (folder / empty).write_text("")
    kind = "document" if empty == "ADI.ALL" else "query"
    with pytest.raises(DataError, match=f"no {kind} with text: the file is empty") as err:
        load_collection("adi", root=tmp_path)
    assert_data_error(err, empty, None)
    assert "ADI.REL" not in str(err.value)


def test_truncated_document_file_is_blamed_not_the_qrels(tmp_path):
    # the documents file stops after record 2; the judgments go on naming documents 3 and 4
    write_adi(tmp_path, ".I 1\n.W\none\n.I 2\n.W\ntwo\n", rel_text="1 1\n1 3\n1 4\n")
    with pytest.raises(DataError, match=r"ADI.ALL: its last document is '2', but 2 judgment\(s\) name 2 later ones "
                                        r"\(first: .*ADI.REL:2, document '3'\): is the file truncated\?"):
        load_collection("adi", root=tmp_path)


# --- TREC SGML ----------------------------------------------------------------------------------

@pytest.mark.parametrize("docs, line, message", [
    ("<DOC>\n<DOCNO>1</DOCNO>\nfirst\n<DOC>\n<DOCNO>2</DOCNO>\nsecond\n</DOC>\n", 1,
     "<DOC> is not closed before the next <DOC> at line 4"),
    (TWO_DOCS + "<DOC>\n<DOCNO>3</DOCNO>\nthird, cut o", 9, "<DOC> is never closed: is the file truncated?"),
    ("<DOC>\n<DOCNO>1</DOCNO>\nfirst\n</DOC>\n</DOC>\n", 5, "</DOC> without an opening <DOC>"),
    ("<DOC>\nno id here\n</DOC>\n", 1, "<DOC> without <DOCNO>"),
])
def test_trec_record_damage_names_the_line(tmp_path, docs, line, message):
    write_vaswani(tmp_path, docs)
    with pytest.raises(DataError, match=message) as err:
        load_collection("vaswani", root=tmp_path)
    assert_data_error(err, "doc-text.trec", line)


def test_trec_reader_is_linear_on_unclosed_tags(tmp_path):
    # a record regex searching for each <DOC>'s </DOC> rescans the rest of the file every time
    write_vaswani(tmp_path, "<DOC>\n<DOCNO>1</DOCNO>\nfirst\n</DOC>\n" + "<DOC>\n" * 20000 + "</DOC>\n")
    start = time.perf_counter()
    with pytest.raises(DataError, match="<DOC> is not closed before the next <DOC> at line 6"):
        load_collection("vaswani", root=tmp_path)
    assert time.perf_counter() - start < 2.0


def test_trec_without_any_record(tmp_path):
    write_vaswani(tmp_path, "these are not TREC records\n")
    with pytest.raises(DataError, match="doc-text.trec: no document with text"):
        load_collection("vaswani", root=tmp_path)


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
    with pytest.raises(DataError, match="duplicate document id d1") as err:
        load_collection(f"beir:{folder}")
    assert_data_error(err, "corpus.jsonl", 4)


def test_beir_judgment_for_unknown_document(tmp_path):
    folder = write_beir(tmp_path / "toy", CORPUS, QUERIES, ["q1\td1\t1", "q1\tnope\t1"])
    with pytest.raises(DataError, match=r"unknown document 'nope' \(not in .*corpus.jsonl\)") as err:
        load_collection(f"beir:{folder}")
    assert_data_error(err, "test.tsv", 3)  # line 1 is the header


def test_beir_qrels_header_is_detected_not_assumed(tmp_path):
    folder = write_beir(tmp_path / "toy", CORPUS, QUERIES, [])
    (folder / "qrels" / "test.tsv").write_text("q1\td1\t2\nq2\td2\t1\n")  # no header line
    assert load_collection(f"beir:{folder}").qrels == {"q1": {"d1": 2}, "q2": {"d2": 1}}
    (folder / "qrels" / "test.tsv").write_text("q1\td1\tgood\n")  # a damaged first judgment is no header
    with pytest.raises(DataError, match="grade 'good' is not a number") as err:
        load_collection(f"beir:{folder}")
    assert_data_error(err, "test.tsv", 1)


def test_beir_title_only_documents_are_indexed(tmp_path):
    corpus = CORPUS + [{"_id": "d4", "title": "Only a title", "text": ""}, {"_id": "d5", "title": "Titled"},
                       {"_id": "d6", "title": "", "text": " "}]
    folder = write_beir(tmp_path / "toy", corpus, QUERIES, ["q1\td4\t1", "q1\td6\t1"])
    with pytest.warns(KitWarning, match="2 item"):
        collection = load_collection(f"beir:{folder}")
    assert collection.docs["d4"] == "Only a title" and collection.docs["d5"] == "Titled"
    assert "d6" not in collection.docs and collection.qrels == {"q1": {"d4": 1}}
    assert collection.skipped[0].endswith("corpus.jsonl:6: document d6 has no title or text")
    assert collection.skipped[1].endswith("test.tsv:3: judgment for skipped document d6")


def test_beir_empty_path_or_missing_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_beir(tmp_path, CORPUS, QUERIES, ["q1\td1\t1"])  # a BEIR folder in the current directory
    with pytest.raises(ValueError, match="beir:<folder>: the folder is missing"):
        load_collection("beir:")
    with pytest.raises(DataError, match="no such folder"):
        load_collection(f"beir:{tmp_path / 'nope'}")


def test_beir_empty_corpus_is_blamed_not_the_qrels(tmp_path):
    folder = write_beir(tmp_path / "toy", [], QUERIES, ["q1\td1\t1"])
    with pytest.raises(DataError, match="corpus.jsonl: no document with text"):
        load_collection(f"beir:{folder}")


def test_beir_truncated_corpus_line(tmp_path):
    folder = write_beir(tmp_path / "toy", CORPUS, QUERIES, ["q1\td1\t1"])
    corpus = folder / "corpus.jsonl"
    corpus.write_text(corpus.read_text()[:-12])
    with pytest.raises(DataError, match="the file ends inside this line: is it truncated") as err:
        load_collection(f"beir:{folder}")
    assert_data_error(err, "corpus.jsonl", 3)


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
