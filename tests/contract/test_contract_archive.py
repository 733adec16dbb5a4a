"""The bar archive's files: layout, sort order, de-duplication and the reader's filters."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from kronos_contract.archive import (
    COLUMNS,
    list_files,
    offset_file_name,
    parse_offset_name,
    read_bars,
    write_bars,
)


def bars(symbols: list[str], start: str, count: int, step: str = "1h", seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for symbol in symbols:
        for ts in pd.date_range(start, periods=count, freq=step, tz="UTC"):
            close = float(rng.uniform(10, 20))
            rows.append((symbol, ts, close, close + 1, close - 1, close, 100.0, 100.0 * close))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def test_one_file_per_utc_date_rows_sorted(tmp_path: Path) -> None:
    frame = bars(["B", "A"], "2024-06-18T20:00Z", 8).sample(frac=1.0, random_state=1)  # shuffled
    paths = write_bars(str(tmp_path), frame, name=offset_file_name("bars", 0, 10, 25))
    assert [Path(p).relative_to(tmp_path).as_posix() for p in paths] == [
        "date=2024-06-18/bars-p0-o10-25.parquet",
        "date=2024-06-19/bars-p0-o10-25.parquet",
    ]
    first = pq.read_table(paths[0]).to_pandas()
    assert list(first.columns) == list(COLUMNS)
    assert list(zip(first["symbol"], first["ts"], strict=True)) == sorted(
        zip(first["symbol"], first["ts"], strict=True)
    )
    assert str(pq.read_schema(paths[0]).field("ts").type) == "timestamp[ns, tz=UTC]"
    assert parse_offset_name("bars-p0-o10-25.parquet") == ("bars", 0, 10, 25)
    assert parse_offset_name("my-topic-p12-o0-1.parquet") == ("my-topic", 12, 0, 1)
    assert parse_offset_name("import-A-x.parquet") is None


def test_round_trip_and_de_duplication(tmp_path: Path) -> None:
    frame = bars(["A", "B"], "2024-06-18T00:00Z", 48)
    write_bars(str(tmp_path), frame.iloc[:60], name="bars-p0-o0-59")
    write_bars(str(tmp_path), frame.iloc[40:], name="bars-p0-o40-95")  # overlaps 20 rows
    changed = frame.iloc[[5]].assign(close=99.0, high=100.0)
    write_bars(str(tmp_path), changed, name="bars-p0-o96-96")  # a later copy of one bar
    got = read_bars(str(tmp_path))
    expected = frame.copy()
    expected.loc[5, ["close", "high"]] = [99.0, 100.0]
    expected = expected.sort_values(["symbol", "ts"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert str(got["ts"].dtype) == "datetime64[ns, UTC]"
    assert got["close"].dtype == np.float64


def test_rewrite_under_the_same_name_is_idempotent(tmp_path: Path) -> None:
    frame = bars(["A"], "2024-06-18T00:00Z", 30)
    first = write_bars(str(tmp_path), frame, name="bars-p0-o0-29")
    second = write_bars(str(tmp_path), frame, name="bars-p0-o0-29")
    assert first == second
    assert len(list(tmp_path.rglob("*.parquet"))) == 2
    assert len(read_bars(str(tmp_path))) == 30
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temporary files left


def test_reader_filters_by_time_and_symbols(tmp_path: Path) -> None:
    frame = bars(["A", "B", "C"], "2024-06-18T00:00Z", 72)  # three days, hourly
    write_bars(str(tmp_path), frame, name="bars-p0-o0-215")
    got = read_bars(str(tmp_path), start="2024-06-18T12:00Z", end="2024-06-19T06:00Z", symbols=["C", "A"])
    assert set(got["symbol"]) == {"A", "C"}
    assert got["ts"].min() == pd.Timestamp("2024-06-18T12:00Z")
    assert got["ts"].max() == pd.Timestamp("2024-06-19T05:00Z")  # end is exclusive
    assert len(got) == 2 * 18
    # naive bounds are UTC; a bound at midnight does not open the next day's file
    assert len(read_bars(str(tmp_path), end="2024-06-19")) == 3 * 24
    assert len(list_files(str(tmp_path), end="2024-06-19")) == 1
    assert len(list_files(str(tmp_path), start="2024-06-20T23:00+00:00")) == 1
    assert read_bars(str(tmp_path), symbols=["Z"]).empty


def test_ignores_temporary_and_foreign_files(tmp_path: Path) -> None:
    write_bars(str(tmp_path), bars(["A"], "2024-06-18T00:00Z", 5), name="bars-p0-o0-4")
    day = tmp_path / "date=2024-06-18"
    (day / ".tmp-123-bars-p0-o5-9.parquet").write_bytes(b"torn")
    (tmp_path / "notes.parquet").write_bytes(b"not ours")
    assert len(read_bars(str(tmp_path))) == 5


def test_empty_archive_has_the_columns(tmp_path: Path) -> None:
    empty = read_bars(str(tmp_path / "nothing-here"))
    assert empty.empty and list(empty.columns) == list(COLUMNS)
    assert str(empty["ts"].dtype) == "datetime64[ns, UTC]"


def test_bad_frames_are_refused_with_a_reason(tmp_path: Path) -> None:
    frame = bars(["A"], "2024-06-18T00:00Z", 3)
    with pytest.raises(ValueError, match="naive"):
        write_bars(str(tmp_path), frame.assign(ts=frame["ts"].dt.tz_localize(None)), name="x")
    with pytest.raises(ValueError, match="amount"):
        write_bars(str(tmp_path), frame.drop(columns="amount"), name="x")
    with pytest.raises(ValueError, match="bad file name"):
        write_bars(str(tmp_path), frame, name="a/b")
    with pytest.raises(ValueError, match="one string"):
        read_bars(str(tmp_path), symbols="A")


def test_object_store_path_through_fsspec_memory() -> None:
    import fsspec

    url = f"memory://archive-{uuid.uuid4().hex}"
    frame = bars(["A", "B"], "2024-06-18T20:00Z", 10)
    paths = write_bars(url, frame, name="bars-p0-o0-19")
    assert len(paths) == 2
    pd.testing.assert_frame_equal(read_bars(url), frame.sort_values(["symbol", "ts"]).reset_index(drop=True),
                                  check_dtype=False)  # fmt: skip
    assert len(read_bars(url, start="2024-06-19")) == 2 * 6
    fsspec.filesystem("memory").rm(url, recursive=True)
