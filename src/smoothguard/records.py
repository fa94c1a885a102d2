"""Items, run folders and records: what evaluation, certification, sweeps and the demo share.

A run folder holds ``run.json`` (the settings that shape the records) and ``records*.jsonl`` (one record
per item, appended and fsynced as produced). A rerun with the same settings resumes (:meth:`RunFolder.pending`
skips items with a record; a line torn by ``kill -9`` is cut off and redone), a rerun with other settings
is refused. Also here: strict JSON / JSON Lines readers with line-numbered errors, atomic JSON, text and
CSV writes.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smoothguard.errors import ConfigError, DataError, RunConflictError

SETTINGS_FILE = "run.json"


@dataclass
class EvalItem:
    """One benchmark question.

    ``id``: unique within the benchmark (records are resumed by it). ``image``: a file path, a PIL
    image or a float tensor [3, H, W] in [0, 1] (anything ``smoothguard.inputs.load_image`` takes).
    ``meta``: JSON-ready fields copied into the item's record (labels, split, scenario, ...).
    """

    id: str
    prompt: str
    image: Any
    meta: dict[str, Any] = field(default_factory=dict)


class RunFolder:
    """A run folder (see the module docstring); refuses settings other than those it was started with."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = path
        settings_file = path / SETTINGS_FILE
        if path.exists() and not path.is_dir():
            raise ConfigError(f"run folder {path} is a file; pass a folder to --out")
        if settings_file.is_file():
            started = read_json(settings_file, "run settings")
            if started != settings:
                raise RunConflictError(
                    f"run folder {path} was started with other settings ({_differences(started, settings)}); "
                    "rerun with the original settings to resume, or pass another --out"
                )
        else:
            path.mkdir(parents=True, exist_ok=True)
            write_json_atomic(settings_file, settings)

    def records_path(self, shard: tuple[int, int] | None = None) -> Path:
        return self.path / ("records.jsonl" if shard is None else f"records.shard-{shard[0]}-of-{shard[1]}.jsonl")

    def pending(self, items: Sequence[EvalItem]) -> tuple[list[dict[str, Any]], list[EvalItem]]:
        """The records already written (every shard) and the items of ``items`` that have none yet."""
        records = read_records(self.path)
        done = {record["id"] for record in records}
        return records, [item for item in items if item.id not in done]

    def write(self, records: Iterable[dict[str, Any]], shard: tuple[int, int] | None = None) -> list[dict[str, Any]]:
        """Append each of ``records`` durably as it is produced (a killed run keeps all but the line it was
        writing); returns them."""
        written = []
        with DurableAppender(self.records_path(shard)) as appender:
            for record in records:
                appender.append(record)
                written.append(record)
        return written


def read_records(folder: Path) -> list[dict[str, Any]]:
    """Every record of every shard of a run folder; a torn last line (a write cut short) is ignored."""
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    for path in sorted(folder.glob("records*.jsonl")):
        lines = path.read_text(encoding="utf-8").split("\n")
        for number, line in enumerate(lines[:-1], 1):  # the part after the last newline is torn or empty
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {number} is corrupt ({exc.msg}); delete that line to resume") from exc
            if record["id"] in seen:
                raise DataError(f"{path}: item {record['id']} has two records; were two runs writing one shard?")
            seen.add(record["id"])
            records.append(record)
    return records


def _differences(old: Any, new: Any, prefix: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        parts = [
            _differences(old.get(key), new.get(key), f"{prefix}{key}.")
            for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)
        ]
        return "; ".join(parts)
    return f"{prefix.rstrip('.')}: {old!r} then, {new!r} now"


class DurableAppender:
    """Appends one JSON object per line, flushed and fsynced per line, so a killed process loses at most
    the line it was writing. On open, a torn last line (no trailing newline) is cut off."""

    def __init__(self, path: Path) -> None:
        self.path = path
        repair_torn_tail(path)
        self._handle = path.open("a", encoding="utf-8")

    def append(self, row: dict[str, Any]) -> None:
        self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> DurableAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def repair_torn_tail(path: Path) -> None:
    """Cut a file back to its last newline (what remains of a write interrupted by ``kill -9``)."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


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


def write_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str], path: Path) -> Path:
    """``rows`` as CSV with ``columns`` (missing values left empty)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path
