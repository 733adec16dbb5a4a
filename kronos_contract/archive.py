"""The bar archive: Parquet files by date on any fsspec root, read back de-duplicated.

Layout (hive style; a local folder or any fsspec URL such as ``s3://bucket/bars``)::

    <root>/date=YYYY-MM-DD/<topic>-p<partition>-o<first>-<last>.parquet   written by the archiver
    <root>/date=YYYY-MM-DD/import-<symbol>-<first ts>-<last ts>.parquet   written by ``archive import``

``date`` is the UTC date of the bars. Columns: ``symbol`` (string), ``ts`` (timestamp[ns, UTC]),
``open``, ``high``, ``low``, ``close``, ``volume``, ``amount`` (float64); rows sorted by (symbol, ts).

A file is written whole under a temporary name, fsync'ed and renamed (local disk) or uploaded in one
piece (object store), so a reader never sees a torn file; a file written again under the same name
(the archiver after a crash, an import run twice) replaces it. Readers de-duplicate on (symbol, ts):
bars that reached the archive twice (a replay, an overlapping import) appear once.
"""

from __future__ import annotations

import io
import posixpath
import re
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kronos_contract.storage import TMP_MARK, open_fs, write_bytes

PRICE_COLUMNS = ("open", "high", "low", "close", "volume", "amount")
COLUMNS = ("symbol", "ts", *PRICE_COLUMNS)
TS_TYPE = pa.timestamp("ns", tz="UTC")
SCHEMA = pa.schema(
    [pa.field("symbol", pa.string(), nullable=False), pa.field("ts", TS_TYPE, nullable=False)]
    + [pa.field(name, pa.float64(), nullable=False) for name in PRICE_COLUMNS]
)
_OFFSET_NAME = re.compile(r"^(?P<topic>.+)-p(?P<partition>\d+)-o(?P<first>\d+)-(?P<last>\d+)\.parquet$")
_DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_NAME = re.compile(r"^[A-Za-z0-9._=+-]+$")

TimeLike = str | datetime | pd.Timestamp


def offset_file_name(topic: str, partition: int, first: int, last: int) -> str:
    """The archiver's file name (without ``.parquet``) for offsets ``first..last`` of a partition."""
    return f"{topic}-p{partition}-o{first}-{last}"


def parse_offset_name(file_name: str) -> tuple[str, int, int, int] | None:
    """(topic, partition, first, last) of an archiver file name, or None for other files."""
    match = _OFFSET_NAME.match(file_name)
    if match is None:
        return None
    return match["topic"], int(match["partition"]), int(match["first"]), int(match["last"])


def safe_name(text: str) -> str:
    """``text`` with every character a file name should not hold replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", text)


def _utc(value: TimeLike, what: str) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{what}={value!r} is not a time; use ISO-8601 such as 2024-06-18T03:15:00Z"
        ) from exc
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def to_table(frame: pd.DataFrame) -> pa.Table:
    """The archive's Arrow table of ``frame`` (columns :data:`COLUMNS`, aware ``ts``), sorted."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"the bars lack the columns {missing}; expected {list(COLUMNS)}")
    ts = pd.to_datetime(frame["ts"])
    if ts.dt.tz is None:
        raise ValueError("the bars' ts column has naive times; localize it first (e.g. .dt.tz_localize(...))")
    data = pd.DataFrame({"symbol": frame["symbol"].astype(str), "ts": ts.dt.tz_convert("UTC")})
    for name in PRICE_COLUMNS:
        data[name] = frame[name].astype("float64").to_numpy()
    if data[list(PRICE_COLUMNS)].isna().any().any():
        raise ValueError("the bars hold missing values; fill amount (volume * mean price) before archiving")
    table = pa.Table.from_pandas(data, schema=SCHEMA, preserve_index=False)
    return table.sort_by([("symbol", "ascending"), ("ts", "ascending")])


def write_bars(
    root: str, frame: pd.DataFrame, *, name: str, storage_options: dict[str, Any] | None = None
) -> list[str]:
    """Write ``frame`` as one Parquet file per UTC date, ``<root>/date=D/<name>.parquet`` each,
    durably (see the module docstring). Returns the paths written (on the root's file system)."""
    if not _NAME.match(name):
        raise ValueError(f"bad file name {name!r}: use letters, digits and . _ = + - only")
    fs, base = open_fs(root, storage_options)
    table = to_table(frame)
    if table.num_rows == 0:
        return []
    days = pc.strftime(table["ts"], format="%Y-%m-%d")
    written = []
    for day in sorted(pc.unique(days).to_pylist()):
        part = table.filter(pc.equal(days, day))
        buffer = io.BytesIO()
        pq.write_table(part, buffer, compression="zstd")
        path = posixpath.join(base, f"date={day}", f"{name}.parquet")
        write_bytes(fs, path, buffer.getvalue())
        written.append(path)
    return written


def _file_order(path: str) -> tuple[Any, ...]:
    day = posixpath.basename(posixpath.dirname(path))
    parsed = parse_offset_name(posixpath.basename(path))
    if parsed is None:
        return (day, 0, posixpath.basename(path), 0, 0)
    topic, partition, first, _ = parsed
    return (day, 1, topic, partition, first)


def list_files(
    root: str,
    start: TimeLike | None = None,
    end: TimeLike | None = None,
    storage_options: dict[str, Any] | None = None,
) -> list[str]:
    """The archive's Parquet files whose date may hold bars in [start, end), in a stable order
    (by date, then imports, then topic, partition and first offset)."""
    fs, base = open_fs(root, storage_options)
    first_day = _utc(start, "start").date() if start is not None else date.min
    last_day: date = date.max
    if end is not None:
        end_ts = _utc(end, "end")
        last_day = (end_ts - pd.Timedelta(1, "ns")).date()
    found = []
    for path in fs.glob(posixpath.join(base, "date=*", "*.parquet")):
        path = str(path)
        match = _DATE_DIR.match(posixpath.basename(posixpath.dirname(path)))
        if match is None or posixpath.basename(path).startswith((".", "_", TMP_MARK)):
            continue
        day = date.fromisoformat(match[1])
        if first_day <= day <= last_day:
            found.append(path)
    return sorted(found, key=_file_order)


def empty_frame() -> pd.DataFrame:
    return SCHEMA.empty_table().to_pandas()


def read_bars(
    root: str,
    start: TimeLike | None = None,
    end: TimeLike | None = None,
    symbols: Iterable[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Bars with ``start <= ts < end`` (naive times read as UTC) of ``symbols`` (all if None).

    Columns :data:`COLUMNS`, ``ts`` tz-aware UTC, sorted by (symbol, ts), one row per (symbol, ts):
    where the archive holds a bar twice, the copy from the later file (a higher offset) wins."""
    fs, _ = open_fs(root, storage_options)
    if isinstance(symbols, str):
        raise ValueError(f"symbols must be a list of symbols, not one string; use [{symbols!r}]")
    wanted = sorted(set(symbols)) if symbols is not None else None
    condition = None
    if start is not None:
        condition = pc.field("ts") >= pa.scalar(_utc(start, "start").value, type=TS_TYPE)
    if end is not None:
        below = pc.field("ts") < pa.scalar(_utc(end, "end").value, type=TS_TYPE)
        condition = below if condition is None else condition & below
    if wanted is not None:
        among = pc.field("symbol").isin(wanted)
        condition = among if condition is None else condition & among
    tables = []
    for path in list_files(root, start, end, storage_options):
        with fs.open(path, "rb") as handle:
            table = pq.read_table(handle, schema=SCHEMA, filters=condition)
        if table.num_rows:
            tables.append(table)
    if not tables:
        return empty_frame()
    table = pa.concat_tables(tables)
    frame = table.to_pandas()
    frame = frame.drop_duplicates(subset=["symbol", "ts"], keep="last")
    return frame.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
