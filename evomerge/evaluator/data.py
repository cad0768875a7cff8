"""Rows of a text dataset from a local JSONL/JSON/CSV/TSV/Parquet file or a Hugging Face dataset id.

One loader for every evaluator that reads question/answer or text columns, so that the errors for a missing file,
an unreachable hub id or a missing column read the same everywhere, and come before any model work.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

LOCAL_FORMATS = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")


def source_spec(src: Any, where: str) -> dict:
    """Normalise `path` or `{path, name, split}` (name/split for hub datasets) to a dict."""
    if isinstance(src, (str, Path)):
        return {"path": str(src)}
    if isinstance(src, dict) and src.get("path"):
        return dict(src)
    raise ValueError(f"{where}: expected a file path or {{path, name, split}}, found {src!r}")


def load_rows(src: Any, where: str) -> list[dict]:
    spec = source_spec(src, where)
    path = Path(spec["path"]).expanduser()
    if path.exists():
        return _local_rows(path, where)
    if path.suffix.lower() in LOCAL_FORMATS or spec["path"].startswith((".", "/", "~")):
        raise FileNotFoundError(f"{where}: data file {path} does not exist")
    return _hub_rows(spec, where)


def _local_rows(path: Path, where: str) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
                data = next(iter(data.values()))
            if not isinstance(data, list):
                raise ValueError("expected a list of objects")
            return data
        if suffix in (".csv", ".tsv"):
            with open(path, encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        if suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise ImportError(f"{where}: .parquet files need pyarrow: pip install 'evomerge[eval]'") from None

            return pq.read_table(path).to_pylist()
    except (json.JSONDecodeError, ValueError, csv.Error) as e:
        raise ValueError(f"{where}: cannot parse {path} as {suffix[1:]}: {e}") from e
    raise ValueError(f"{where}: {path} has an unsupported extension {suffix!r}; expected one of {LOCAL_FORMATS}")


def _hub_rows(spec: dict, where: str) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise ImportError(f"{where}: hub datasets need the `datasets` package: pip install 'evomerge[eval]' (or "
                          "point it at a local .jsonl/.json/.csv file)") from None

    try:
        ds = datasets.load_dataset(spec["path"], name=spec.get("name"), split=spec.get("split", "test"))
    except Exception as e:  # noqa: BLE001 - offline hub failures come in many types
        raise FileNotFoundError(
            f"{where}: cannot load the dataset {spec['path']!r} (name={spec.get('name')!r}, split="
            f"{spec.get('split', 'test')!r}) from the Hugging Face hub or its local cache ({type(e).__name__}: "
            f"{str(e)[:200]}). Offline, download it where you have network access and point {where} at a local "
            f".jsonl/.csv file."
        ) from e
    return [dict(r) for r in ds]


def require_columns(rows: list[dict], columns: list[str], where: str) -> None:
    if not rows:
        raise ValueError(f"{where}: the dataset is empty")
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise ValueError(f"{where}: column(s) {missing} not found; the rows have columns {sorted(rows[0])}")
