"""The helpers every notebook opens with (grouprank_mini.notebook)."""
import pytest

from grouprank_mini import get_preset, notebook


def test_preset_table_shows_the_name_and_only_the_fields_asked_for():
    table = notebook.preset_table(get_preset("smoke"), ["group_size", "rerank_depth"])
    assert list(table.index) == ["preset", "group_size", "rerank_depth"]
    assert list(table["value"]) == ["smoke", "5", "10"]
    with pytest.raises(KeyError, match="groupsize"):
        notebook.preset_table(get_preset("smoke"), ["groupsize"])


def test_the_reference_is_read_from_the_clone_and_puts_each_number_beside_this_runs():
    ref = notebook.reference()
    assert ref["preset"] == "cpu" and ref["measured"] and ref["machine"]
    assert set(ref["results"]) == {"01_data_synthesis", "02_sft_lora", "03_grpo", "04_evaluation"}
    table = notebook.beside_reference(get_preset("smoke"), "03_grpo", {"steps": 2.0, "only here": 0.12345})
    assert list(table.columns) == ["this run (smoke)", f"cpu preset ({ref['measured']})"]
    assert table.loc["steps"].tolist() == ["2", format(ref["results"]["03_grpo"]["steps"], "g")]
    assert table.loc["only here"].tolist() == ["0.123", ""]  # rounded; not measured in the reference
    assert table.loc["held-out seed spread", "this run (smoke)"] == ""
    with pytest.raises(KeyError, match="05_nothing"):
        notebook.beside_reference(get_preset("smoke"), "05_nothing", {})
