"""The helpers every notebook opens with (grouprank_mini.notebook)."""
import pytest

from grouprank_mini import get_preset, notebook


def test_preset_table_shows_the_name_and_only_the_fields_asked_for():
    table = notebook.preset_table(get_preset("smoke"), ["group_size", "rerank_depth"])
    assert list(table.index) == ["preset", "group_size", "rerank_depth"]
    assert list(table["value"]) == ["smoke", "5", "10"]
    with pytest.raises(KeyError, match="groupsize"):
        notebook.preset_table(get_preset("smoke"), ["groupsize"])
