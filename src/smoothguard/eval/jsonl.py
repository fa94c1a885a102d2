"""JSON and JSON Lines files: strict readers with line-numbered errors, durable appends, atomic writes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from smoothguard.eval.errors import DataError


def read_json(path: str | Path, what: str) -> Any:
    """One JSON document; ``DataError`` naming ``what`` when missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} {path} is not valid JSON ({exc})") from exc


def read_jsonl(path: str | Path, what: str) -> list[dict[str, Any]]:
    """Every non-blank line of a JSON Lines file, each a JSON object."""
    return list(iter_jsonl(path, what))


def iter_jsonl(path: str | Path, what: str) -> Iterator[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{what} {path}, line {number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise DataError(f"{what} {path}, line {number}: expected a JSON object, got {type(row).__name__}")
            yield row


def require(row: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    """``DataError`` unless ``row`` has every key in ``keys``."""
    missing = [key for key in keys if key not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)}")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temporary file and ``os.replace`` (readers never see half a file)."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
