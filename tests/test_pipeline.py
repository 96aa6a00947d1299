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
