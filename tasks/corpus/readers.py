"""Stream ``RawRecord``s out of arXiv metadata files, whatever their format.

Readers map fields and report what they could not read as error records; they never
judge a paper (that is ``validate``'s job) and never load a whole file, since the Kaggle
snapshot is several GB. Only a source that cannot be opened at all raises.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

import polars as pl

from tasks.corpus.records import RAW_CHARS, RawRecord

FORMATS = ("jsonl", "kaggle", "hf-parquet", "atom", "oai")

_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
_DATA_SUFFIXES = (".jsonl", ".json", ".ndjson", ".parquet", ".xml", ".atom")
_SNIFF_BYTES = 64 * 1024
_PARQUET_BATCH_ROWS = 10_000
_XML_ROOTS = {"feed": "atom", "OAI-PMH": "oai"}


class SourceError(ValueError):
    """A source is missing, unreadable or of a format no reader knows."""


def read_source(
    source: str | Path, fmt: str | None = None, *, limit: int | None = None
) -> Iterator[RawRecord]:
    """Every record in a file, or in every data file under a folder (sorted by path).

    ``fmt`` is one of ``FORMATS`` or None to detect it per file. Raises SourceError at
    once, before any record is read, when the source or the format is unusable.
    """
    if limit is not None and limit < 0:
        raise SourceError(f"limit must be zero or more, got {limit}")
    plan = check_source(source, fmt)
    records = (record for path, file_fmt in plan for record in _read_file(path, file_fmt))
    return islice(records, limit)


def check_source(source: str | Path, fmt: str | None = None) -> list[tuple[Path, str]]:
    """Each data file of the source with its format, reading no more than their first
    bytes: SourceError now (a missing path, an unreadable file, an unknown format) rather
    than once a flow has started."""
    if fmt is not None and fmt not in FORMATS:
        raise SourceError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    return [(path, _format_of(path, fmt)) for path in _data_files(Path(source))]


def detect_format(path: str | Path) -> str:
    """One of ``FORMATS``, from the extension and the first bytes (gzip is looked through)."""
    path = Path(path)
    head = _head(path)
    if path.name.endswith(".parquet") or head.startswith(_PARQUET_MAGIC):
        return "hf-parquet"
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if text.startswith("<"):
        return _xml_format(path, text)
    if text.startswith("{"):
        return "kaggle" if _first_object_has_versions(text) else "jsonl"
    if any(s in path.name for s in (".json", ".ndjson")):
        # A damaged first line is still JSON lines; its reader reports the line.
        return "jsonl"
    what = "an empty file" if not text else f"starts with {text[:20]!r}"
    raise SourceError(f"cannot tell the format of {path}: {what}; name one of {FORMATS}")


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt is None:
        return detect_format(path)
    _open(path).close()  # so that an unreadable file fails now, not halfway through a stream
    return fmt


def _data_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.exists():
        raise SourceError(
            f"source {path} does not exist; give the path of an arXiv metadata file "
            f"or folder ({', '.join(FORMATS)})"
        )
    if not path.is_dir():
        raise SourceError(f"source {path} is neither a file nor a folder; give one of those")
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and _is_data_file(p.name)
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise SourceError(f"folder {path} holds no data files (looked for {_DATA_SUFFIXES})")
    return files


def _is_data_file(name: str) -> bool:
    return name.removesuffix(".gz").endswith(_DATA_SUFFIXES)


def _open(path: Path) -> BinaryIO:
    """The file's bytes, gunzipped when its first bytes say gzip, whatever its name."""
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
        return gzip.open(path, "rb") if magic == _GZIP_MAGIC else open(path, "rb")
    except OSError as err:
        raise SourceError(f"cannot read {path}: {err.strerror or err}") from err


def _head(path: Path) -> bytes:
    head = b""
    with _open(path) as f:
        try:
            while len(head) < _SNIFF_BYTES:
                chunk = f.read1(_SNIFF_BYTES - len(head))
                if not chunk:
                    break
                head += chunk
        except (EOFError, gzip.BadGzipFile, zlib.error):
            pass  # A cut or damaged gzip file still gets a format; its reader reports the damage.
        except OSError as err:
            raise SourceError(f"cannot read {path}: {err}") from err
    return head


def _xml_format(path: Path, text: str) -> str:
    # The first start tag that is not a declaration, comment or doctype is the root.
    root = re.search(r"<(?![?!])(?:[\w.-]+:)?([\w.-]+)", text)
    name = root.group(1) if root else "?"
    if name not in _XML_ROOTS:
        raise SourceError(
            f"cannot tell the format of {path}: XML root <{name}> is neither an Atom <feed> "
            "nor <OAI-PMH>"
        )
    return _XML_ROOTS[name]


def _first_object_has_versions(text: str) -> bool:
    first_line = text.split("\n", 1)[0]
    try:
        first = json.loads(first_line)
    except ValueError:
        # A first line longer than the sniffed head: look for the key itself.
        return re.search(r'"versions"\s*:', first_line) is not None
    return isinstance(first, dict) and "versions" in first


def _read_file(path: Path, fmt: str) -> Iterator[RawRecord]:
    if fmt in ("jsonl", "kaggle"):
        return _read_json_lines(path, _map_kaggle if fmt == "kaggle" else _map_jsonl)
    if fmt == "hf-parquet":
        return _read_parquet(path)
    return _read_feed(path, fmt)


# ---- JSON lines -------------------------------------------------------------------------


def _read_json_lines(path: Path, mapper: Any) -> Iterator[RawRecord]:
    source = str(path)
    line_no = 0
    with _open(path) as f:
        try:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    yield _json_record(source, line_no, line, mapper)
        except EOFError:
            yield _stream_error(source, f"gzip stream ended early after line {line_no}")
        except (gzip.BadGzipFile, zlib.error) as err:
            yield _stream_error(source, f"gzip stream is corrupt after line {line_no} ({err})")


def _stream_error(source: str, problem: str) -> RawRecord:
    return RawRecord(source, "end of input", None, raw="", error=f"truncated input: {problem}")


def _json_record(source: str, line_no: int, line: bytes, mapper: Any) -> RawRecord:
    where = f"line {line_no}"
    line = line.rstrip(b"\r\n")
    raw = line.decode("utf-8", errors="replace").strip()[:RAW_CHARS]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        problem = f"not valid UTF-8 (byte 0x{line[err.start]:02x} at offset {err.start})"
        return RawRecord(source, where, None, raw, error=f"{where}: {problem}")
    try:
        obj = json.loads(text.lstrip("\ufeff"))
    except ValueError as err:
        return RawRecord(source, where, None, raw, error=f"{where}: invalid JSON ({err})")
    if not isinstance(obj, dict):
        problem = f"not a JSON object (got {_json_type(obj)})"
        return RawRecord(source, where, None, raw, error=f"{where}: {problem}")
    return RawRecord(source, where, mapper(obj), raw)


def _json_type(obj: Any) -> str:
    names = {list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(obj), "number")


def _map_jsonl(obj: dict[str, Any]) -> dict[str, Any]:
    """Our sample, and the daily-listing scraper, whose abstract is ``summary``."""
    return {
        "id": obj.get("id"),
        "title": obj.get("title"),
        "abstract": obj["abstract"] if "abstract" in obj else obj.get("summary"),
        "categories": _primary_first(obj.get("categories"), obj.get("primary_category")),
        "published": obj.get("published"),
    }


def _primary_first(categories: Any, primary: Any) -> Any:
    # Some scraper forks list the primary category separately and out of order.
    if not isinstance(categories, list) or not isinstance(primary, str):
        return categories
    return [primary, *(c for c in categories if c != primary)]


def _map_kaggle(obj: dict[str, Any]) -> dict[str, Any]:
    """The Kaggle snapshot: v1's ``created`` is the submission date; the last entry is newest."""
    versions = obj.get("versions")
    well_formed = isinstance(versions, list) and versions and isinstance(versions[0], dict)
    return {
        "id": obj.get("id"),
        "title": obj.get("title"),
        "abstract": obj.get("abstract"),
        "categories": obj.get("categories"),
        # A malformed list is passed on as is so that validation rejects it by name.
        "published": versions[0].get("created") if well_formed else versions,
        "version": len(versions) if well_formed else None,
    }


# ---- Hugging Face parquet ---------------------------------------------------------------

_ID_COLUMNS = ("id", "arxiv_id")
_OPTIONAL_COLUMNS = ("categories", "published")


def _read_parquet(path: Path) -> Iterator[RawRecord]:
    """Only the needed columns are read: the astro-ph set also holds whole introductions."""
    source = str(path)
    try:
        scan = pl.scan_parquet(path)
        columns = scan.collect_schema().names()
    except (pl.exceptions.PolarsError, OSError) as err:
        raise SourceError(f"cannot read parquet file {path}: {err}") from err
    id_column = next((c for c in _ID_COLUMNS if c in columns), None)
    missing = [c for c in ("title", "abstract") if c not in columns]
    if id_column is None or missing:
        need = ", ".join(([] if id_column else ["id or arxiv_id"]) + missing)
        raise SourceError(f"parquet file {path} lacks column(s) {need}; it has {columns}")
    wanted = [id_column, "title", "abstract", *(c for c in _OPTIONAL_COLUMNS if c in columns)]
    return _parquet_rows(source, scan.select(wanted), id_column)


def _parquet_rows(source: str, scan: pl.LazyFrame, id_column: str) -> Iterator[RawRecord]:
    row_no = 0
    try:
        for batch in scan.collect_batches(chunk_size=_PARQUET_BATCH_ROWS):
            for row in batch.iter_rows(named=True):
                row_no += 1
                yield _parquet_record(source, row_no, row, id_column)
    except (pl.exceptions.PolarsError, OSError) as err:
        problem = f"parquet data unreadable after row {row_no} ({err})"
        yield _stream_error(source, problem)


def _parquet_record(source: str, row_no: int, row: dict[str, Any], id_column: str) -> RawRecord:
    title = row["title"]
    fields = {
        "id": row[id_column],
        # The astro-ph set stores ADS-style titles: a list whose first element is the title.
        "title": title[0] if isinstance(title, list) and title else title,
        "abstract": row["abstract"],
        "categories": row.get("categories"),
        "published": row.get("published"),
    }
    raw = json.dumps(row, ensure_ascii=False, default=str)[:RAW_CHARS]
    return RawRecord(source, f"row {row_no}", fields, raw)


# ---- Atom and OAI-PMH -------------------------------------------------------------------


def _read_feed(path: Path, fmt: str) -> Iterator[RawRecord]:
    source = str(path)
    with _open(path) as f:
        try:
            data = f.read()
        except EOFError:
            yield _stream_error(source, "gzip stream ended early; no XML could be read")
            return
        except (gzip.BadGzipFile, zlib.error) as err:
            yield _stream_error(source, f"gzip stream is corrupt ({err})")
            return
    # Imported here: only feed files need the XML parsers.
    from tasks.corpus.feeds import FeedError, parse_atom, parse_oai

    raw = data.decode("utf-8", errors="replace")[:RAW_CHARS]
    try:
        page = parse_atom(data, source) if fmt == "atom" else parse_oai(data, source)
    except FeedError as err:
        # A cut or garbled page is a damaged record, like a truncated JSON line.
        yield RawRecord(source, "feed", None, raw=raw, error=f"unreadable feed: {err}")
        return
    yield from page.records
    if page.error:
        yield RawRecord(source, "feed", None, raw=raw, error=page.error)
