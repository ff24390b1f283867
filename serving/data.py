"""Readers for the user's own training data (CSV or Parquet) through fsspec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec


def read_table(path: str | Path) -> dict[str, list[Any]]:
    """Read a CSV or Parquet file (local path or fsspec URI) into named columns."""
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    path = str(path)
    with fsspec.open(path, "rb") as handle:
        if path.endswith((".parquet", ".pq")):
            table = pq.read_table(handle)
        elif path.endswith((".csv", ".csv.gz")):
            table = pa_csv.read_csv(handle)
        else:
            raise ValueError(f"{path}: expected a .csv or .parquet file")
    return table.to_pydict()


def require_columns(columns: dict[str, list[Any]], names: list[str], path_hint: str = "") -> None:
    """Fail with the list of missing columns, so a user can fix the file."""
    missing = [n for n in names if n not in columns]
    if missing:
        where = f" in {path_hint}" if path_hint else ""
        raise ValueError(f"missing column(s){where}: {', '.join(missing)}")
