"""The main job's command line (grouprank_mini.pipeline), without running a notebook."""
import argparse

import pytest

from grouprank_mini import pipeline


def test_set_reads_literals_and_keeps_words_as_text():
    assert pipeline.field_value("group_size=5") == ("group_size", 5)
    assert pipeline.field_value("synth_group_sizes=(5, 20)") == ("synth_group_sizes", (5, 20))
    assert pipeline.field_value("teacher_endpoint=None") == ("teacher_endpoint", None)
    assert pipeline.field_value("model=/tmp/tiny-qwen") == ("model", "/tmp/tiny-qwen")
    with pytest.raises(argparse.ArgumentTypeError, match="name=value"):
        pipeline.field_value("group_size")


def test_an_unknown_field_fails_before_any_notebook_runs(tmp_path):
    with pytest.raises(KeyError, match="grup_size"):
        pipeline.run_notebooks("smoke", tmp_path / "run", overrides={"grup_size": 5})
    assert not (tmp_path / "run").exists()


def test_summary_aligns_the_values_and_prints_counts_whole(tmp_path):
    (tmp_path / "results.json").write_text(
        '{"01": {"train queries": 12.0, "human judgments (NOT answer-free) nDCG@10": 0.51574}, "02": {"note": "text"}}')
    lines = pipeline.summary(tmp_path).splitlines()
    assert len(lines) == 2, "text values are left out"
    assert lines[0].endswith(" 12") and lines[1].endswith(" 0.5157")
    assert len({len(line) for line in lines}) == 1, "one column for the values"
