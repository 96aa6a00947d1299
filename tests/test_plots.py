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


def test_sweep_plot_draws_both_axes():
    table = pd.DataFrame({"nDCG@10": [0.3, 0.4], "seconds/query": [1.0, 2.0]}, index=[1, 2])
    fig = plots.sweep_plot(table, "passes", "t")
    assert len(fig.axes) == 2 and list(fig.axes[0].lines[0].get_ydata()) == [0.3, 0.4]


def test_returned_figures_render_as_png_in_a_notebook():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()  # what a notebook kernel runs; get_ipython() now finds it
    fig = plots.score_histograms({"SFT": [1, 5, 9]})
    plots.show_figures_in_notebooks()
    data, _ = shell.display_formatter.format(fig)
    assert data["image/png"]  # drawn, not just "<Figure size ...>"
