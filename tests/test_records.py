"""Run folders and their records: the one resume loop of eval, sweeps and certify."""

import json

import pytest

from smoothguard.errors import ConfigError, DataError, RunConflictError
from smoothguard.eval import evaluate
from smoothguard.records import EvalItem, RunFolder, read_records
from support.common import exact

ITEMS = [EvalItem(f"q{i}", f"prompt {i}", None) for i in range(5)]


def produce(items, log, stop_after=None):
    """One record per item, as a run would produce them; raises after ``stop_after`` (a killed run)."""
    for done, item in enumerate(items):
        if stop_after is not None and done == stop_after:
            raise KeyboardInterrupt
        log.append(item.id)
        yield {"id": item.id, "text": item.prompt.upper()}


def test_a_run_cut_short_resumes_with_the_items_it_had_not_answered(tmp_path):
    folder = RunFolder(tmp_path / "run", {"model": "m"})
    records, todo = folder.pending(ITEMS)
    assert records == [] and todo == ITEMS
    log: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        folder.write(produce(todo, log, stop_after=2))
    assert [r["id"] for r in read_records(folder.path)] == ["q0", "q1"]  # each record landed as produced

    again = RunFolder(tmp_path / "run", {"model": "m"})
    records, todo = again.pending(ITEMS)
    assert [r["id"] for r in records] == ["q0", "q1"] and [i.id for i in todo] == ["q2", "q3", "q4"]
    written = again.write(produce(todo, log))
    assert [r["id"] for r in written] == ["q2", "q3", "q4"] and log == ["q0", "q1", "q2", "q3", "q4"]
    assert [r["text"] for r in read_records(again.path)] == [f"PROMPT {i}" for i in range(5)]
    assert again.pending(ITEMS) == (read_records(again.path), [])


def test_shards_write_their_own_files_and_are_read_together(tmp_path):
    folder = RunFolder(tmp_path, {"model": "m"})
    folder.write(produce(ITEMS[0::2], []), shard=(0, 2))
    folder.write(produce(ITEMS[1::2], []), shard=(1, 2))
    assert sorted(p.name for p in tmp_path.glob("records*.jsonl")) == [
        "records.shard-0-of-2.jsonl",
        "records.shard-1-of-2.jsonl",
    ]
    records, todo = folder.pending(ITEMS)
    assert sorted(r["id"] for r in records) == [i.id for i in ITEMS] and todo == []


def test_a_torn_last_line_is_redone(tmp_path):
    folder = RunFolder(tmp_path, {})
    folder.write(produce(ITEMS[:2], []))
    with folder.records_path().open("a", encoding="utf-8") as handle:
        handle.write('{"id": "q2", "te')  # kill -9 in the middle of a line
    records, todo = folder.pending(ITEMS)
    assert [r["id"] for r in records] == ["q0", "q1"] and todo[0].id == "q2"
    folder.write(produce(todo, []))
    lines = folder.records_path().read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == [i.id for i in ITEMS]


def test_other_settings_are_refused_and_a_file_is_not_a_folder(tmp_path):
    RunFolder(tmp_path / "run", {"model": "m", "guard": {"sigma": 0.1}})
    with pytest.raises(RunConflictError, match=r"guard\.sigma: 0\.1 then, 0\.2 now"):
        RunFolder(tmp_path / "run", {"model": "m", "guard": {"sigma": 0.2}})
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=exact(f"run folder {tmp_path / 'file'} is a file; pass a folder to --out")):
        RunFolder(tmp_path / "file", {})


def test_a_corrupt_record_is_named_with_its_line(pope_run, tiny_llava):
    pope, spec, run = pope_run
    records = run / "records.jsonl"
    lines = records.read_text().splitlines()
    records.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.raises(DataError, match=r"records.jsonl, line 2 is corrupt"):
        read_records(run)
    with pytest.raises(DataError, match="delete that line to resume"):
        evaluate("pope", spec, run, data=pope, model=tiny_llava, max_new_tokens=2)


def test_two_records_of_one_item_are_refused(pope_run):
    run = pope_run[2]
    first = (run / "records.jsonl").read_text().splitlines()[0]
    (run / "records.shard-0-of-2.jsonl").write_text(first + "\n")
    with pytest.raises(DataError, match="has two records; were two runs writing one shard"):
        read_records(run)
