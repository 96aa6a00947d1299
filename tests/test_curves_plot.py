"""The learning-curve figure draws the stages of experiments.learning_curve end to end."""
import pandas as pd

from grouprank_mini import plots


def curve(queries=(8, 8, 8, 8, 8)) -> pd.DataFrame:
    """SFT evaluated at steps 0, 3, 6 and GRPO at 0, 2 (a stage's step 0 is the previous one's end)."""
    return pd.DataFrame({"stage": ["SFT", "SFT", "SFT", "GRPO", "GRPO"], "step": [0, 3, 6, 0, 2],
                         "nDCG@10": [0.20, 0.25, 0.30, 0.30, 0.35], "queries": list(queries)})


def test_stages_are_laid_end_to_end_with_a_marker_per_point():
    ax = plots.learning_curve(curve()).axes[0]
    sft, grpo = ax.lines
    assert list(sft.get_xdata()) == [0, 3, 6] and list(grpo.get_xdata()) == [6, 8]  # GRPO starts where SFT ended
    assert list(grpo.get_ydata()) == [0.30, 0.35] and sft.get_marker() == "o"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["SFT", "GRPO"]
    assert "8 queries" in ax.get_title()


def test_a_stage_starts_on_the_point_of_the_model_it_trains_from():
    """GRPO from the SFT snapshot of step 3 (kept on dev queries) branches off there, not at SFT's end."""
    kept = curve().assign(adapter=["base model", "sft/step-3", "sft", "sft/step-3", "grpo/step-2"])
    sft, grpo = plots.learning_curve(kept).axes[0].lines
    assert list(sft.get_xdata()) == [0, 3, 6] and list(grpo.get_xdata()) == [3, 5]


def test_first_stage_line_and_whole_step_ticks():
    short = pd.DataFrame({"stage": ["SFT", "SFT", "GRPO", "GRPO"], "step": [0, 1, 0, 1],
                          "nDCG@10": [0.2, 0.3, 0.3, 0.3], "queries": 2})  # 2 steps: matplotlib would tick 0.25
    fig = plots.learning_curve(short, first_stage=0.27, first_stage_label="BM25 alone")
    ax = fig.axes[0]
    fig.canvas.draw()  # tick positions are chosen at drawing time
    dashed = ax.lines[-1]
    assert list(dashed.get_ydata()) == [0.27, 0.27] and dashed.get_linestyle() == "--"
    assert "BM25 alone" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert all(float(t).is_integer() for t in ax.get_xticks())


def test_chance_line_is_dotted_below_the_first_stage():
    fig = plots.learning_curve(curve(), first_stage=0.38, chance=0.20)
    ax = fig.axes[0]
    first, chance = ax.lines[-2:]
    assert list(chance.get_ydata()) == [0.20, 0.20] and chance.get_linestyle() == ":"
    assert list(first.get_ydata()) == [0.38, 0.38]
    assert "same candidates, random order" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_title_shows_a_range_when_points_saw_different_query_counts():
    assert "7-8 queries" in plots.learning_curve(curve((8, 8, 7, 7, 7))).axes[0].get_title()
