"""Fetching the test collections for a machine with internet: `make data`, or
`python -m grouprank_mini.data fetch <name> [...]`, or lazily from `data.load_collection`
when $GROUPRANK_ONLINE=1. What exists, where it comes from and how it is checked is
data/manifest.json (data/README.md explains it).

Two ways in. `ir_datasets` covers Cranfield, Vaswani and the BEIR sets: it is the IR field's
own loader, knows each source's URL and md5, falls back to its mirror and keeps a cache.
We do not load through it at run time, though: each collection is written out once under
data/<name>/ in the layout the kit's loaders already read (Cranfield's original files,
Vaswani as TREC files, BEIR as corpus.jsonl/queries.jsonl/qrels). So one loader per format
reads a fetched copy and a hand-made one alike, the files can be opened and checked by eye,
and the kit runs offline after one fetch without importing ir_datasets again. CISI and ADI,
which ir_datasets does not carry, come as a plain download of the source's archive.

Nothing half-made ever sits under a final name. A download goes to a `.partial` sibling
(`runtime.atomic_path`), resumes with an HTTP Range request after a cut connection, starts
over after a checksum mismatch, and is renamed only once its size and checksum (when the
source publishes them) match. The collection folder is built the same way and renamed only
after the kit's own loader has read it and found the manifest's counts: a truncated or
corrupted file fails there (a parse error or a wrong count), naming the file, and is removed.

$GROUPRANK_MIRROR=<base URL> fetches every archive from <base>/<archive file name> instead
(a folder of the source archives behind any web server, e.g. for a class without internet),
checked against the same checksums; ir_datasets then finds the archive in its cache.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import sys
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from contextlib import contextmanager
from functools import cache, partial
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from tqdm import tqdm

from .runtime import PROJECT_ROOT, KitWarning, atomic_path, cache_dir, data_dir, data_places


class FetchError(RuntimeError):
    """A download or fetched collection that cannot be used; the message names the URL or file."""


_UNREADABLE = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error)  # a damaged archive, as each module says it


# --- the manifest ----------------------------------------------------------------------------------

def catalog_file(name: str) -> Path:
    """A file of data/ in a clone (manifest.json, reference_cpu.json); a wheel carries the same files
    as grouprank_mini/catalog/ (pyproject's package-dir), since an installed package has no data/ beside it."""
    in_clone = PROJECT_ROOT / "data" / name
    return in_clone if in_clone.is_file() else Path(__file__).with_name("catalog") / name


def manifest_path() -> Path:
    """data/manifest.json: where each collection comes from and how a fetch is checked."""
    return catalog_file("manifest.json")


@cache
def catalog() -> dict[str, dict]:
    """Collection name -> its manifest entry (source, layout, files, counts)."""
    return json.loads(manifest_path().read_text(encoding="utf-8"))


def beir_sets() -> set[str]:
    """Names that load as BEIR folders (one word each: scifact, nfcorpus)."""
    return {name for name, entry in catalog().items() if entry["layout"] == "beir"}


# --- where a collection is -------------------------------------------------------------------------

def locate(name: str, root: Path | str | None, loader) -> Path:
    """The folder of collection `name`: under `root` when given (as is, no fetch); else where
    `runtime.data_dir` finds it; else, on a machine allowed online ($GROUPRANK_ONLINE=1), fetched
    now; else the one-line error that says what to run."""
    if root is not None:
        return Path(root) / name
    try:
        return data_dir(name) / name
    except FileNotFoundError:
        if os.environ.get("GROUPRANK_ONLINE") != "1":
            raise
    return fetch(name, loader)


def fetch(name: str, loader, into: Path | None = None) -> Path:
    """Fetch collection `name` to <into>/<name> (default: the first of `runtime.data_places()`) and
    return that folder. `loader(folder)` is the kit's loader for it (`data` sits above this module):
    the folder is renamed into place only once it loads with the manifest's counts."""
    entry = catalog().get(name)
    if entry is None:
        raise KeyError(f"no collection {name!r} in {manifest_path()}; choose from {sorted(catalog())}")
    target = Path(into or data_places()[0]) / name
    with atomic_path(target) as folder:
        folder.mkdir()
        (_from_ir_datasets if "ir_datasets" in entry["source"] else _from_archive)(entry, folder)
        _check(name, entry, folder, loader)
    _compare_with_reference(name, entry, target)
    return target


def _check(name: str, entry: dict, folder: Path, loader) -> None:
    with warnings.catch_warnings():  # what the loader skips is announced when the collection is used
        warnings.simplefilter("ignore", KitWarning)
        try:
            collection = loader(folder)
        except ValueError as err:  # DataError names the file and line
            raise FetchError(f"{name}: the fetched files do not parse, so they were removed: {err}") from None
    counts = {"docs": len(collection.docs), "queries": len(collection.queries),
              "judgments": sum(len(judged) for judged in collection.qrels.values())}
    if counts != entry["counts"]:
        raise FetchError(f"{name}: fetched files hold {counts}, {manifest_path()} expects {entry['counts']}; removed")


def _compare_with_reference(name: str, entry: dict, target: Path) -> None:
    """Say so when a file differs from the copy the kit's published numbers were measured on:
    the fetch is sound (it passed its checks), but figures may move slightly."""
    differ = [file for file, spec in entry["files"].items()
              if "reference" in spec and digest(target / file, "sha256") != spec["reference"]["sha256"]]
    if differ:
        warnings.warn(f"{name}: {', '.join(differ)} in {target} differ from the reference copy in "
                      f"{manifest_path()} (the kit's measured numbers may shift slightly)", KitWarning, stacklevel=3)


# --- the two sources -------------------------------------------------------------------------------

def _from_archive(entry: dict, folder: Path) -> None:
    """A plain download of the source's archive; the manifest's files are taken out of it."""
    source = entry["source"]
    with tempfile.TemporaryDirectory() as scratch:
        archive = download(_mirrored(source["url"]), Path(scratch) / _file_name(source["url"]), **_sums(source))
        unpack(archive, list(entry["files"]), folder)


def _from_ir_datasets(entry: dict, folder: Path) -> None:
    """ir_datasets fetches (or finds in its cache) and parses; we write the kit's layout."""
    irds = _ir_datasets()
    source = entry["source"]
    cached = irds.util.home_path() / source["cache"]
    if os.environ.get("GROUPRANK_MIRROR") and not cached.exists():  # where ir_datasets keeps its downloads
        download(_mirrored(source["url"]), cached, **_sums(source))
    try:
        for file, spec in entry["files"].items():
            _write_file(irds, entry, spec, folder / file)
    except (OSError, RuntimeError, ValueError, *_UNREADABLE) as err:  # requests' errors are OSErrors
        # ir_datasets keeps only verified downloads, so an archive there that fails came from elsewhere
        # (a copy put by hand): remove it, or every later fetch would fail on it again.
        where = f"{cached}, now removed" if cached.exists() else source["url"]
        cached.unlink(missing_ok=True)
        raise FetchError(f"{source['ir_datasets']} ({where}): {type(err).__name__}: {err}") from None


def _write_file(irds, entry: dict, spec: dict, path: Path) -> None:
    source = entry["source"]["ir_datasets"]
    dataset = irds.load(f"{source}/{spec['subset']}" if "subset" in spec else source)
    path.parent.mkdir(parents=True, exist_ok=True)
    if entry["layout"] == "smart":  # Cranfield: its original files, byte for byte
        shutil.copyfile(getattr(dataset, f"{spec['from']}_path")(), path)
    else:
        _write_records(path, entry["layout"], spec["from"], getattr(dataset, f"{spec['from']}_iter")())


def _ir_datasets():
    """The ir_datasets module, its cache kept in the kit's .cache/ unless $IR_DATASETS_HOME says
    otherwise (it reads that variable once, on import)."""
    os.environ.setdefault("IR_DATASETS_HOME", str(cache_dir() / "ir_datasets"))
    try:
        import ir_datasets
    except ImportError:
        raise FetchError("fetching this collection needs ir_datasets: pip install ir_datasets "
                         "(the tested version is pinned in requirements.txt)") from None
    return ir_datasets


# How ir_datasets' records are written in each layout the kit reads (see `data`'s loaders).
_FORMATS = {
    ("trec", "docs"): lambda d: f"<DOC>\n<DOCNO>{d.doc_id}</DOCNO>\n{d.text.strip()}\n</DOC>\n",
    ("trec", "queries"): lambda q: f"<top>\n<num>{q.query_id}</num><title>\n{q.text.strip()}\n</title>\n</top>\n",
    ("trec", "qrels"): lambda r: f"{r.query_id} 0 {r.doc_id} {r.relevance}\n",
    ("beir", "docs"): lambda d: json.dumps({"_id": d.doc_id, "title": getattr(d, "title", ""), "text": d.text}) + "\n",
    ("beir", "queries"): lambda q: json.dumps({"_id": q.query_id, "text": q.text}) + "\n",
    ("beir", "qrels"): lambda r: f"{r.query_id}\t{r.doc_id}\t{r.relevance}\n",
}
_HEADERS = {("beir", "qrels"): "query-id\tcorpus-id\tscore\n"}


def _write_records(path: Path, layout: str, part: str, records) -> None:
    line = _FORMATS[layout, part]
    with open(path, "w", encoding="utf-8") as out:
        out.write(_HEADERS.get((layout, part), ""))
        out.writelines(map(line, records))


# --- downloading -----------------------------------------------------------------------------------

def download(url: str, path: Path, size: int | None = None, md5: str | None = None,
             sha256: str | None = None, tries: int = 3, timeout: float = 60) -> Path:
    """Download `url` to `path`, which appears only complete and verified (size, md5, sha256: each
    when given). A cut connection is resumed with a Range request (or restarted when the server
    ignores it); a checksum mismatch starts over; after `tries` failed attempts, FetchError."""
    expected = {key: value for key, value in (("size", size), ("md5", md5), ("sha256", sha256)) if value}
    with atomic_path(path) as part:
        for attempt in range(1, tries + 1):
            try:
                _transfer(url, part, timeout)
                _verify(part, url, expected)
                break
            except HTTPError as err:
                if err.code < 500 and err.code != 416:  # a missing file or a refusal: trying again changes nothing
                    raise FetchError(f"{url}: HTTP {err.code} {err.reason}") from None
                failure = f"HTTP {err.code}"
                part.unlink(missing_ok=True)  # 416: our partial is no prefix of this file
            except FetchError as err:  # wrong bytes: keep none of them
                failure = str(err)
                part.unlink(missing_ok=True)
            except (OSError, http.client.HTTPException) as err:  # cut or timed out: resume next time
                failure = f"{type(err).__name__}: {err}"
            if attempt == tries:
                raise FetchError(f"{url}: gave up after {tries} attempts; last: {failure}")
    return path


def _transfer(url: str, part: Path, timeout: float) -> None:
    """One attempt: append to `part` from where it stops, or rewrite it if the server sends it all."""
    have = part.stat().st_size if part.exists() else 0
    request = Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urlopen(request, timeout=timeout) as response:
        resumed = response.status == 206
        length = response.headers.get("Content-Length")
        total = int(length) + (have if resumed else 0) if length else None
        with open(part, "ab" if resumed else "wb") as out, \
                tqdm(total=total, initial=have if resumed else 0, unit="B", unit_scale=True,
                     desc=_file_name(url), leave=False) as bar:
            while chunk := response.read(1 << 16):
                out.write(chunk)
                bar.update(len(chunk))
    received = part.stat().st_size
    if total is not None and received < total:  # the server closed early without an error of its own
        raise http.client.IncompleteRead(b"", total - received)


def _verify(path: Path, url: str, expected: dict) -> None:
    if "size" in expected and path.stat().st_size != expected["size"]:
        raise FetchError(f"{url}: {path.stat().st_size} bytes, expected {expected['size']}")
    for algo in ("md5", "sha256"):
        if algo in expected and (got := digest(path, algo)) != expected[algo]:
            raise FetchError(f"{url}: {algo} {got}, expected {expected[algo]} (corrupted download)")


def digest(path: Path, algo: str) -> str:
    hasher = hashlib.new(algo)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            hasher.update(block)
    return hasher.hexdigest()


def _sums(source: dict) -> dict:
    return {key: source[key] for key in ("size", "md5", "sha256") if key in source}


def _mirrored(url: str) -> str:
    mirror = os.environ.get("GROUPRANK_MIRROR", "").rstrip("/")
    return f"{mirror}/{_file_name(url)}" if mirror else url


def _file_name(url: str) -> str:
    return Path(urlsplit(url).path).name


# --- unpacking -------------------------------------------------------------------------------------

def unpack(archive: Path, names: list[str], folder: Path) -> None:
    """Copy the files `names` out of a .tar(.gz) or .zip `archive` into `folder`. Each is matched by
    the end of its member path (archives differ in their top folder). The names written come from
    the manifest, never from the archive, so no member can land outside `folder`."""
    try:
        with _members(archive) as members:
            for name in names:
                found = [member for member in members if member == name or member.endswith("/" + name)]
                if len(found) != 1:
                    raise FetchError(f"{archive}: {len(found)} members named {name} (expected one)")
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                with members[found[0]]() as source, open(folder / name, "wb") as out:
                    shutil.copyfileobj(source, out)
    except _UNREADABLE as err:
        raise FetchError(f"{archive}: not a readable archive ({type(err).__name__}: {err})") from None


@contextmanager
def _members(archive: Path):
    """{member path: opener} for the regular files of a zip or tar archive, open for the block."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            yield {info.filename: partial(handle.open, info) for info in handle.infolist() if not info.is_dir()}
    else:
        with tarfile.open(archive) as handle:  # compression is detected from the bytes
            yield {member.name: partial(handle.extractfile, member) for member in handle.getmembers() if member.isfile()}


# --- the command line (run as `python -m grouprank_mini.data fetch ...`) ----------------------------

def main(argv: list[str] | None, loader_for) -> None:
    """`fetch NAME [NAME ...]`: each collection not found by `runtime.data_dir` is fetched;
    `loader_for(name)` gives the kit's loader that checks it."""
    parser = argparse.ArgumentParser(prog="python -m grouprank_mini.data",
                                     description=f"Fetch test collections into {data_places()[0]}.")
    parser.add_argument("command", choices=["fetch"])
    parser.add_argument("names", nargs="+", choices=sorted(catalog()), metavar="NAME",
                        help=f"one or more of {', '.join(sorted(catalog()))}")
    args = parser.parse_args(argv)
    for name in args.names:
        try:
            print(f"{name}: already at {data_dir(name) / name}")
            continue
        except FileNotFoundError:
            pass
        try:
            print(f"{name}: fetched to {fetch(name, loader_for(name))}")
        except FetchError as err:
            sys.exit(f"error: {err}")
