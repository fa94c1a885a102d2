"""Run folders: the settings a run was started with, and its records (JSON Lines, durable appends).

A run folder holds ``run.json`` (the settings that shape the records) and ``records*.jsonl`` (one record
per item, appended and fsynced as produced). Evaluation (``eval.runner``) and certification
(``certify.run``) both keep their runs here: a rerun with the same settings resumes (items with a record
are skipped; a line torn by ``kill -9`` is cut off and redone), a rerun with other settings is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from smoothguard.errors import ConfigError
from smoothguard.eval.errors import DataError, RunConflictError
from smoothguard.eval.jsonl import read_json, write_json_atomic

SETTINGS_FILE = "run.json"


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

    def records_path(self, shard: tuple[int, int] | None) -> Path:
        return self.path / ("records.jsonl" if shard is None else f"records.shard-{shard[0]}-of-{shard[1]}.jsonl")


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
