"""Plot helpers draw what they are given."""
import pandas as pd

from grouprank_mini import plots

def test_score_histograms_one_panel_per_source():
    fig = plots.score_histograms({"SFT": [1, 2, 2, 9], "target": [10, 0]})
    assert [ax.get_title() for ax in fig.axes] == ["SFT", "target"]
    assert sum(p.get_height() for p in fig.axes[0].patches) == 1.0  # density over unit-width bins


def test_win_loss_counts_wins_and_losses():
    fig = plots.win_loss({"a": 0.5, "b": 0.1, "c": 0.3}, {"a": 0.2, "b": 0.4, "c": 0.3}, "x")
    assert fig.axes[0].get_title() == "x: 1 wins, 1 losses"


def test_sweep_plot_draws_both_axes_with_one_legend_and_whole_ticks():
    table = pd.DataFrame({"nDCG@10": [0.3, 0.4, 0.35], "seconds/query": [1.0, 2.0, 4.0]}, index=[1, 2, 4])
    fig = plots.sweep_plot(table, "passes", "t")
    assert len(fig.axes) == 2 and list(fig.axes[0].lines[0].get_ydata()) == [0.3, 0.4, 0.35]
    assert list(fig.axes[0].get_xticks()) == [1, 2, 4]  # the swept values, no 1.5 passes
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["nDCG@10 (left)", "seconds / query (right)"]


def test_quality_vs_speed_names_paradigms_in_a_legend():
    table = pd.DataFrame({"nDCG@10": [0.3, 0.2, 0.25], "seconds/query": [float("nan"), 1.0, 1.0]},
                         index=["BM25", "groupwise", "groupwise-logprob"])
    fig = plots.quality_vs_speed(table, queries=4)
    ax = fig.axes[0]
    assert ax.get_title() == "Quality vs speed (4 queries)" and not ax.texts  # no labels to overlap
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(table.index)


def test_interpolation_plot_draws_retriever_model_and_final_per_document():
    model, retriever = {"a": 10.0, "b": 0.0}, {"a": 1.0, "b": 3.0}
    fig = plots.interpolation(model, retriever, {"a": 0.6, "b": 0.4}, 0.4, {"a"}, "q")
    lines = [line for line in fig.axes[0].lines if len(line.get_ydata())]
    assert [list(line.get_ydata()) for line in lines] == [[0.0, 1.0, 0.6], [1.0, 0.0, 0.4]]
    assert lines[0].get_color() == "tab:orange"  # the relevant document stands out


def test_returned_figures_render_as_png_in_a_notebook():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()  # what a notebook kernel runs; get_ipython() now finds it
    fig = plots.score_histograms({"SFT": [1, 5, 9]})
    plots.show_figures_in_notebooks()
    data, _ = shell.display_formatter.format(fig)
    assert data["image/png"]  # drawn, not just "<Figure size ...>"


def _grpo_log(steps: int) -> pd.DataFrame:
    """A history as train.history returns it: one row per step, reward columns and TRL's spread metrics."""
    index = pd.Index(range(1, steps + 1), name="step")
    return pd.DataFrame({"reward": [float(s % 3) for s in index.tolist()], "reward/ndcg": 0.5,
                         plots.GROUP_STD: 0.2, plots.BATCH_STD: 0.3,
                         plots.GROUPS_ZERO_STD: [0.5 if s % 2 else 0.0 for s in index.tolist()]}, index=index)


def test_the_rolling_window_grows_with_the_run():
    assert [plots.rolling_window(n) for n in (2, 10, 20, 100)] == [2, 2, 4, 20]


def test_plot_rewards_adds_a_labelled_rolling_mean_of_the_total():
    fig = plots.plot_rewards(_grpo_log(20))
    lines = {line.get_label(): line for line in fig.axes[0].lines}
    assert set(lines) == {"total", "ndcg", "total, rolling mean of 4 batches"}
    smooth = list(lines["total, rolling mean of 4 batches"].get_ydata())
    assert smooth[:5] == [1.0, 1.5, 1.0, 1.0, 1.25]  # rewards 1, 2, 0, 1, 2: the first steps average what exists
    assert [text.get_text() for text in fig.axes[0].get_legend().get_texts()][-1] == "total, rolling mean of 4 batches"


def test_plot_rewards_skips_the_rolling_mean_of_a_single_step_and_reused_batches():
    assert [line.get_label() for line in plots.plot_rewards(_grpo_log(1)).axes[0].lines] == ["total", "ndcg"]
    log = _grpo_log(6)
    log.loc[[2, 4, 6], "reward"] = float("nan")  # steps that reused a batch of completions sampled nothing
    smooth = plots.plot_rewards(log).axes[0].lines[-1]
    assert list(smooth.get_xdata()) == [1, 3, 5]


def test_plot_reward_spread_draws_both_axes_with_one_legend_and_whole_steps():
    fig = plots.plot_reward_spread(_grpo_log(3))
    left, right = fig.axes
    assert [line.get_label() for line in left.lines] == ["std within a group",
                                                         "std over the whole batch (TRL's reward_std)"]
    assert list(right.lines[0].get_ydata()) == [0.5, 0.0, 0.5]
    legend = [text.get_text() for text in left.get_legend().get_texts()]
    assert legend == [line.get_label() for line in left.lines + right.lines]
    fig.canvas.draw()  # ticks are placed when drawn
    assert all(float(tick).is_integer() for tick in left.get_xticks())


def test_plot_reward_spread_of_a_history_without_spread_metrics_is_empty_not_an_error():
    fig = plots.plot_reward_spread(pd.DataFrame({"reward": [0.1]}, index=pd.Index([1], name="step")))
    assert not fig.axes[0].lines and fig.axes[0].get_legend() is None


def test_calibration_plot_has_a_box_per_gain_and_the_query_count_in_its_title():
    table = pd.DataFrame({"gain": [0, 0, 1, 2], "score": [3.0, 4.0, 5.0, 7.0], "spread": [0.0] * 4})
    ax = plots.calibration_plot(table, queries=8).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2"]
    assert ax.get_title().endswith("(8 queries)")
    assert "queries" not in plots.calibration_plot(table).axes[0].get_title()


def test_teacher_validation_bars_label_each_ranking_and_count_the_queries():
    table = pd.DataFrame({"nDCG@10": [0.38, 0.4], "queries": [12, 12]}, index=["hybrid retriever", "fused"])
    ax = plots.teacher_validation_bars(table).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["fused", "hybrid retriever"]  # first row on top
    assert ax.get_title() == "Teachers as rerankers of the pools (12 queries)"
