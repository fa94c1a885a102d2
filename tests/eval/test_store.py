"""Tests of ``smoothguard.eval.store``."""

import pytest

from smoothguard.eval import DataError, evaluate
from smoothguard.eval.store import read_records


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
