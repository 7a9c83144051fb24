"""The crawler: the lake's tables, their partitions and their Parquet schemas, as a :class:`CatalogState`.

A table is one folder of the lake, its *root*: ``curated/<table>/`` for every folder below
``curated/``, and the other roots :data:`citibikes.lake.layout.TABLES` names (``quarantine/``,
``pipeline_runs/``). ``raw/`` (the JSON archive), ``_state/`` and ``_athena/`` are never tables, nor is any other
top-level folder. Below a root, each data file sits in a Hive partition folder, named by the
table's partition keys in order: ``system=<id>/date=<YYYY-MM-DD>/hour=<H>/<name>.parquet``
(``pipeline_runs``: ``date=`` only). A table the layout does not know (a folder a user adds below ``curated/``)
takes its keys from its files; ``system`` is text, ``date`` a date, ``hour`` an integer 0-23 and
any other key text.

By the lake's convention a name starting with ``.`` or ``_`` is not data: such folders are
skipped, and so are such files unless they end in ``.parquet`` (in-flight temporary files, markers;
a ``.parquet`` file in a partition folder is read by the views whatever its name, so it is data).
One such folder is read: the compacted versions of an hour, ``<hour folder>/_compacted/v<N>/compacted.parquet``,
or of a day, ``<date folder>/_compacted/v<N>/compacted.parquet`` with ``hour`` as a column
(:mod:`citibikes.compaction`), each one file, written whole or not at all, whose key-value metadata
``citibikes.compaction`` names the files below its folder it holds (its *sources*; a day's also its rows
per hour). A table reads every file but those the newest compacted file of a folder holds and that
folder's older versions (:func:`citibikes.lake.layout.live_keys`): an hour partition reads its day's
file (if the day is compacted and has rows in that hour), its own newest compacted file and the files
of its folder none holds (a late file: a backfill or a retried minute run after the compaction),
listed explicitly; a partition none of whose files is held or compacted reads its folder's glob. So the
lake alone says what each partition holds, and a catalog built anew from it reads the same rows.
Everything else that is not a ``.parquet`` file in a well-formed partition folder is a *foreign*
file; a ``.parquet`` file whose footer cannot be read, or whose schema does not fit its table (a
column the table requires is missing, or a column has another type), is *incompatible*. Either
makes :func:`crawl` raise one :class:`CatalogInputError` naming the first such file, how many there
are and the fix, and the crawl registers nothing (the catalog stays as it was); nothing is deleted
(moving the file out of the lake, or writing it again, is the user's call).

A table's schema is the lake's own for the tables it writes (:data:`citibikes.lake.tables.TABLE_SCHEMAS`);
for another table, the schema it was first registered with (that of most of its files then), and
its partition keys are those most of its files have. Files may add columns or leave out optional
ones; the catalog then reads the table by column name.

Footers are read once: the previous :class:`CatalogState` remembers each file's size, modification
time, schema fingerprint and row count, so a crawl reads only the footers of new or rewritten files.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from citibikes.catalog.errors import CatalogInputError
from citibikes.config import SYSTEM_ID_PATTERN
from citibikes.errors import first_line
from citibikes.lake import Lake, layout
from citibikes.lake.tables import TABLE_SCHEMAS

CURATED = "curated"
TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
PARTITION_TYPES = {"system": "VARCHAR", "date": "DATE", "hour": "INTEGER"}
"""DuckDB types of the partition keys; any other key is VARCHAR."""
FOOTER_THREADS = 8
"""Footers read at once (on S3 each is two small ranged GETs; locally it hardly matters)."""


@dataclass(frozen=True)
class TableRoot:
    """A table's folder: its name, its key prefix in the lake, and its partition keys (None: learned from its files)."""

    name: str
    prefix: str
    partition_keys: tuple[str, ...] | None


@dataclass(frozen=True)
class FileRecord:
    """One data file as the catalog remembers it (``key`` relative to the lake root)."""

    table: str
    key: str
    partition: str
    size: int
    mtime_ns: int
    fingerprint: str
    rows: int
    version: int | None = None
    """Of a compacted file (``_compacted/v<N>/``); None for a file of the partition's folder."""
    sources: tuple[str, ...] | None = None
    """Of a compacted file: the paths below its folder of the files it holds."""
    hour_rows: tuple[int, ...] | None = None
    """Of a compacted day (``partition`` is then the day: ``system=x/date=d``): its rows per hour 0-23."""
    switched_at: datetime | None = None
    """Of a compacted file: when the catalog first read it. What it holds may be deleted once no reader
    can hold an older catalog (:func:`citibikes.compaction.delete_replaced`)."""


@dataclass
class Partition:
    """One Hive partition of a table. ``files`` is None while every ``*.parquet`` of ``location`` is
    read (new files show up at once); a partition with compacted or held files reads only its
    explicit ``files`` (its day's compacted file, its own newest compacted file, any late file)."""

    table: str
    path: str
    """``system=citibike/date=2024-03-13/hour=13``: the folder below the table's root."""
    location: str
    """The folder's URI."""
    files: tuple[str, ...] | None = None
    file_count: int = 0
    rows: int = 0
    bytes: int = 0
    """Of a compacted day's file, the share of its rows in this hour."""

    @property
    def values(self) -> dict[str, str]:
        return dict(part.split("=", 1) for part in self.path.split("/"))


@dataclass
class Table:
    name: str
    prefix: str
    root: str
    """The root folder's URI."""
    partition_keys: tuple[str, ...]
    fingerprint: str
    """Of the table's schema (a key of :attr:`CatalogState.schemas`)."""
    union_by_name: bool = False
    """Its files do not all have one schema: read them by column name."""
    partitions: dict[str, Partition] = field(default_factory=dict)

    @property
    def file_count(self) -> int:
        """Files read (a compacted day's once)."""
        listed = {file for p in self.partitions.values() for file in p.files or ()}
        return len(listed) + sum(p.file_count for p in self.partitions.values() if p.files is None)

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.partitions.values())

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.partitions.values())


@dataclass
class CatalogState:
    """Everything the catalog holds: what :func:`crawl` finds, what the DuckDB file stores."""

    lake: str
    tables: dict[str, Table] = field(default_factory=dict)
    files: dict[str, FileRecord] = field(default_factory=dict)
    schemas: dict[str, pa.Schema] = field(default_factory=dict)
    version: int = 0
    """Counts the catalogs written: each crawl writes the next."""
    footers_read: int = 0
    """Footers the crawl that made this state read (the others were known)."""


# -- schemas -----------------------------------------------------------------------------------

def _type_text(kind: pa.DataType) -> str:
    """A type as text that ignores what Parquet does not keep (list item names, map field names)."""
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return f"list<{_type_text(kind.value_type)}>"
    if pa.types.is_map(kind):
        return f"map<{_type_text(kind.key_type)}, {_type_text(kind.item_type)}>"
    if pa.types.is_struct(kind):
        return "struct<" + ", ".join(f"{f.name}: {_type_text(f.type)}" for f in kind) + ">"
    return str(kind)


def columns_text(schema: pa.Schema) -> str:
    """``name type[ not null], ...``: a schema as one readable line."""
    return ", ".join(f"{f.name} {_type_text(f.type)}{'' if f.nullable else ' not null'}" for f in schema)


def fingerprint(schema: pa.Schema) -> str:
    """Names and types, in order (not nullability: files differing only there read as one table)."""
    text = "\n".join(f"{f.name} {_type_text(f.type)}" for f in schema)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def misfit(schema: pa.Schema, table: pa.Schema, partition_keys: Iterable[str]) -> str | None:
    """Why a file of ``schema`` cannot be read as part of ``table`` (None: it can)."""
    for name in partition_keys:
        if name in schema.names:
            return f"it has a column {name}, the name of a partition column"
    for wanted in table:
        index = schema.get_field_index(wanted.name)
        if index < 0:
            if not wanted.nullable:
                return f"it has no column {wanted.name}, which the table requires"
            continue
        got = schema.field(index).type
        if _type_text(got) != _type_text(wanted.type):
            return f"its column {wanted.name} is {_type_text(got)}, the table's is {_type_text(wanted.type)}"
    return None


# -- discovery ---------------------------------------------------------------------------------

def table_roots(lake: Lake) -> list[TableRoot]:
    """Every table folder: those the layout names, and each folder below ``curated/``."""
    roots = {name: TableRoot(name, table.prefix, table.partition_keys) for name, table in layout.TABLES.items()}
    for info in _list(lake, CURATED, recursive=False):
        name = info.base_name
        if info.type != pafs.FileType.Directory or name[0] in "._" or name in roots:
            continue
        if not TABLE_NAME.match(name):
            raise CatalogInputError(
                f"{lake.storage.uri(f'{CURATED}/{name}')}: a folder below curated/ is a table, and {name!r} cannot "
                "name one (lowercase letters, digits, '_'); rename it or move it out of the lake")
        roots[name] = TableRoot(name, f"{CURATED}/{name}", None)
    return sorted(roots.values(), key=lambda root: root.name)


def _list(lake: Lake, prefix: str, *, recursive: bool) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(lake.storage.path(prefix), recursive=recursive, allow_not_found=True)
    try:
        return lake.filesystem.get_file_info(selector)
    except OSError as exc:
        raise lake.storage.error(exc, f"cannot list {lake.storage.uri(prefix)}") from None


def _value_problem(key: str, value: str) -> str | None:
    if not value:
        return f"{key}= has no value"
    if key == "system" and not SYSTEM_ID_PATTERN.match(value):
        return f"system={value} is not a system id"
    if key == "date":
        try:
            if len(value) != 10 or date.fromisoformat(value).isoformat() != value:
                raise ValueError
        except ValueError:
            return f"date={value} is not a date (YYYY-MM-DD)"
    if key == "hour" and not (value.isdigit() and str(int(value)) == value and int(value) < 24):
        return f"hour={value} is not an hour (0-23, no leading zero)"
    return None


@dataclass
class _Listing:
    """A table root's data files (key, partition path, size, mtime, compacted version or None) and
    the foreign ones (key, why)."""

    keys: tuple[str, ...] | None
    data: list[tuple[str, str, int, int, int | None]] = field(default_factory=list)
    foreign: list[tuple[str, str]] = field(default_factory=list)


def _list_table(lake: Lake, root: TableRoot) -> _Listing:
    """A table root's files, sorted; a table the layout does not know takes the partition keys most of its files have."""
    listing = _Listing(root.partition_keys)
    base = lake.storage.path(root.prefix).rstrip("/") + "/"
    candidates: list[tuple[str, list[str], int, int, int | None]] = []
    versions: set[tuple] = set()
    for info in sorted(_list(lake, root.prefix, recursive=True), key=lambda i: i.path):
        if info.type != pafs.FileType.File:
            continue
        relative = info.path.removeprefix(base)
        *folders, name = relative.split("/")
        key = f"{root.prefix}/{relative}"
        version = layout.compacted_version(f"/{relative}")
        if version is not None:
            folders = folders[:-2]
            if (*folders, version) in versions:  # compaction writes one file per version
                listing.foreign.append((key, f"a second file in compacted version {version} (compaction writes one)"))
                continue
            versions.add((*folders, version))
        elif any(folder[0] in "._" for folder in folders) or (name[0] in "._" and not name.endswith(".parquet")):
            continue  # not data by the lake's convention
        if not name.endswith(".parquet"):
            listing.foreign.append((key, "not a .parquet file"))
        elif not folders or not all("=" in folder for folder in folders):
            listing.foreign.append((key, "not in a key=value partition folder"))
        else:
            candidates.append((key, folders, info.size, info.mtime_ns or 0, version))
    sequences = [tuple(folder.split("=", 1)[0] for folder in candidate[1]) for candidate in candidates]
    if listing.keys is None and sequences:
        listing.keys = max(dict.fromkeys(sequences), key=sequences.count)
    for (key, folders, size, mtime, version), keys in zip(candidates, sequences):
        problem = next(filter(None, (_value_problem(*folder.split("=", 1)) for folder in folders)), None)
        day = version is not None and listing.keys[-1:] == (layout.DAY_COLUMN,) and keys == listing.keys[:-1]
        if keys != listing.keys and not day:
            listing.foreign.append((key, f"not in a {'/'.join(f'{k}=' for k in listing.keys)} folder"))
        elif problem:
            listing.foreign.append((key, problem))
        else:
            listing.data.append((key, "/".join(folders), size, mtime, version))
    listing.foreign.sort()
    return listing


def _footer(lake: Lake, key: str) -> tuple[pa.Schema, int, tuple[str, ...] | None, tuple[int, ...] | None] | str | None:
    """A file's schema (a compacted day's without its ``hour`` column), rows and, of a compacted file, sources
    and (a day's) rows per hour; a text saying why it is no Parquet file, or no compacted file; None if it is gone."""
    try:
        with lake.filesystem.open_input_file(lake.storage.path(key)) as source:
            metadata = pq.ParquetFile(source).metadata
    except FileNotFoundError:
        return None  # removed since it was listed (a compaction's clean-up): not part of the table any more
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        return f"it is not a readable Parquet file ({first_line(exc)})"
    except OSError as exc:
        raise lake.storage.error(exc, f"cannot read {lake.storage.uri(key)}") from None
    schema, sources, hour_rows = metadata.schema.to_arrow_schema(), None, None
    if layout.compacted_version(key) is not None:
        sources = layout.compacted_sources(metadata.metadata)
        if sources is None:
            return (f"it has no {layout.COMPACTION_METADATA} metadata naming its sources; delete it (the next compaction "
                    "writes the partition again)")
    if layout.is_day_file(key):
        hour_rows, index = layout.compacted_hour_rows(metadata.metadata), schema.get_field_index(layout.DAY_COLUMN)
        if hour_rows is None or index < 0 or schema.field(index).type != pa.int32():
            return (f"a compacted day needs an int32 column {layout.DAY_COLUMN} and its rows per hour in its "
                    f"{layout.COMPACTION_METADATA} metadata; delete it (the next compaction writes the day again)")
        schema = schema.remove(index)
    return schema, metadata.num_rows, sources, hour_rows


# -- the crawl ---------------------------------------------------------------------------------

def crawl(lake: Lake, previous: CatalogState | None = None) -> CatalogState:
    """The lake's tables, partitions and files now; footers only of files ``previous`` does not know
    (same key, size and modification time). Raises :class:`CatalogInputError` (one line) on foreign or incompatible files."""
    previous = previous or CatalogState(lake=lake.uri)
    state = CatalogState(lake=lake.uri, schemas=dict(previous.schemas), version=previous.version)
    listings = {root.name: (root, _list_table(lake, root)) for root in table_roots(lake)}
    foreign = [item for _, listing in listings.values() for item in listing.foreign]

    unknown = [key for _, listing in listings.values()
               for key, _, size, mtime, _ in listing.data if not _known(previous.files.get(key), size, mtime)]
    with ThreadPoolExecutor(FOOTER_THREADS) as pool:
        footers = dict(zip(unknown, pool.map(lambda key: _footer(lake, key), unknown)))
    state.footers_read = len(unknown)
    now = datetime.now(UTC)

    misfits: list[tuple[str, str]] = []
    for name, (root, listing) in listings.items():
        records = []
        for key, partition, size, mtime, version in listing.data:
            known = previous.files.get(key)
            if _known(known, size, mtime):
                records.append(known)
                continue
            footer = footers[key]
            if footer is None:
                continue
            if isinstance(footer, str):
                misfits.append((key, footer))
                continue
            schema, rows, sources, hour_rows = footer
            state.schemas.setdefault(fingerprint(schema), schema)
            records.append(FileRecord(name, key, partition, size, mtime, fingerprint(schema), rows, version, sources,
                                      hour_rows, now if version is not None else None))
        if not records and name not in TABLE_SCHEMAS:
            continue
        reference = _reference(name, previous, state, records)
        table = Table(name, root.prefix, lake.storage.uri(root.prefix), listing.keys or (), reference)
        for fp in sorted({record.fingerprint for record in records}):
            problem = misfit(state.schemas[fp], state.schemas[reference], table.partition_keys)
            if problem:
                misfits.extend((r.key, problem) for r in records if r.fingerprint == fp)
        table.union_by_name = len({record.fingerprint for record in records}) > 1
        _partition(lake, table, records)
        state.tables[name] = table
        state.files.update((record.key, record) for record in records)

    if foreign or misfits:
        raise CatalogInputError(_bad_input_message(lake, foreign, sorted(misfits)))
    state.schemas = {fp: state.schemas[fp] for fp in
                     {r.fingerprint for r in state.files.values()} | {t.fingerprint for t in state.tables.values()}}
    return state


def _known(record: FileRecord | None, size: int, mtime_ns: int) -> bool:
    return record is not None and record.size == size and record.mtime_ns == mtime_ns


def _reference(name: str, previous: CatalogState, state: CatalogState, records: list[FileRecord]) -> str:
    """The fingerprint of a table's schema: the lake's own, else the one it was registered with, else
    the one most of its files have (the first such in path order)."""
    if name in TABLE_SCHEMAS:
        schema = TABLE_SCHEMAS[name]
        state.schemas.setdefault(fingerprint(schema), schema)
        return fingerprint(schema)
    if name in previous.tables:
        return previous.tables[name].fingerprint
    fingerprints = [record.fingerprint for record in records]
    return max(dict.fromkeys(fingerprints), key=fingerprints.count)


def partition_reads(records: Iterable[FileRecord]) -> dict[str, list[FileRecord]]:
    """Per partition of one table's files ``records``, the files it reads (see the module doc): a compacted
    day's file first, in each hour it has rows in, then the partition's own."""
    by_key = {record.key: record for record in records}
    live = [by_key[key] for key in layout.live_keys(by_key, lambda key: by_key[key].sources or ())]
    found: dict[str, list[FileRecord]] = {}
    for record in sorted(live, key=lambda r: r.hour_rows is None):
        for hour, rows in enumerate(record.hour_rows or ()):
            if rows:
                found.setdefault(f"{record.partition}/{layout.DAY_COLUMN}={hour}", []).append(record)
        if record.hour_rows is None:
            found.setdefault(record.partition, []).append(record)
    return found


def _partition(lake: Lake, table: Table, records: list[FileRecord]) -> None:
    """Group ``records`` into ``table``'s partitions (see the module doc)."""
    in_folder = Counter(record.partition for record in records)
    for path, files in sorted(partition_reads(records).items(), key=lambda item: partition_sort_key(item[0])):
        partition = Partition(table.name, path, lake.storage.uri(f"{table.prefix}/{path}"), file_count=len(files))
        for record in files:
            rows = record.hour_rows[int(path.rsplit("=", 1)[1])] if record.hour_rows else record.rows
            partition.rows += rows
            partition.bytes += record.size * rows // record.rows if record.hour_rows else record.size
        if any(r.version is not None for r in files) or len(files) != in_folder[path]:
            partition.files = tuple(lake.storage.uri(r.key) for r in files)
        table.partitions[path] = partition


def partition_sort_key(path: str) -> tuple:
    """Partitions in time order (``hour=9`` before ``hour=10``)."""
    return tuple((0, int(v), "") if k == "hour" else (1, 0, v)
                 for k, v in (part.split("=", 1) for part in path.split("/")))


def _bad_input_message(lake: Lake, foreign: list[tuple[str, str]], misfits: list[tuple[str, str]]) -> str:
    """One line: the first problem (incompatible files first), the fix, and how many more there are."""
    if misfits:
        key, why = misfits[0]
        text = (f"{lake.storage.uri(key)} does not fit its table: {why}; write it again with the table's schema "
                "or move it out of the lake")
    else:
        key, why = foreign[0]
        text = f"{lake.storage.uri(key)} is foreign to the lake: {why}; move it out of the lake's table folders"
    more = len(foreign) + len(misfits) - 1
    return f"{text} (nothing registered{f'; {more} more file(s) like it' if more else ''})"
