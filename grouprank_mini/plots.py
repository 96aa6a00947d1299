"""Small plotting helpers for the notebooks; each returns a matplotlib Figure.

Figures are built without pyplot, so a notebook shows a returned figure once and nothing
is left open between cells.
"""
from __future__ import annotations

from matplotlib.figure import Figure

# --- training curves (input: train.history(output_dir), a DataFrame indexed by step) ---------------

FORMAT_FAILURE = "format_failure"  # the reward's log_metric name for the share of unreadable answers


def _curves(history, columns: dict[str, str], title: str, ylabel: str) -> Figure:
    """One line per present column ({column: label}), against the training step."""
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.add_subplot()
    for column, label in columns.items():
        if column in history:
            series = history[column].dropna()
            ax.plot(series.index, series.values, marker=".", label=label)
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    if ax.lines:
        ax.legend()
    return fig


def plot_loss(history) -> Figure:
    """Training loss and, when the run was evaluated, eval loss."""
    return _curves(history, {"loss": "loss", "eval_loss": "eval_loss"}, "Loss", "loss")


def reward_columns(history) -> dict[str, str]:
    """The total reward, each reward function's mean and the reward terms they logged."""
    columns = {"reward": "reward"}
    for column in history.columns:
        if column.startswith("rewards/") and column.endswith("/mean"):
            columns[column] = column.split("/")[1]
        elif column.startswith("reward/"):  # terms logged through TRL's log_metric
            columns[column] = column.split("/", 1)[1]
    return columns


def plot_rewards(history, columns: dict[str, str] | None = None) -> Figure:
    """GRPO reward over steps, one line per term (pass {column: label} to choose)."""
    return _curves(history, columns or reward_columns(history), "Reward", "mean over completions")


def plot_format_failures(history, column: str = FORMAT_FAILURE) -> Figure:
    """Share of completions whose answer could not be read, over steps."""
    fig = _curves(history, {column: "format failures"}, "Format failures", "share of completions")
    fig.axes[0].set_ylim(-0.02, 1.02)
    return fig


# --- retrieval results (input: evaluate.per_query_scores) ---------------------------------------

def per_query_bars(per_query: dict[str, float], title: str = "nDCG@10 per test query") -> Figure:
    """One bar per query, sorted, with the mean as a dashed line: where does BM25 fail?"""
    values = sorted(per_query.values(), reverse=True)
    fig = Figure(figsize=(7, 3), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(len(values)), values, color="tab:blue")
    if values:
        ax.axhline(sum(values) / len(values), color="black", linestyle="--", label="mean")
        ax.legend()
    ax.set(title=title, xlabel="queries, best to worst", ylabel="score", ylim=(0, 1.02))
    return fig


def quality_vs_speed(table) -> Figure:
    """nDCG@10 against seconds per query, one labelled point per paradigm (rerank.compare_paradigms)."""
    fig = Figure(figsize=(5.5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    for name, row in table.iterrows():
        seconds = row.get("seconds/query", 0.0)
        seconds = 0.0 if seconds != seconds else seconds  # BM25 has no LLM time (NaN)
        ax.scatter(seconds, row["nDCG@10"], s=40)
        ax.annotate(name, (seconds, row["nDCG@10"]), textcoords="offset points", xytext=(5, 4))
    ax.set(title="Quality vs speed", xlabel="seconds per query (LLM)", ylabel="nDCG@10")
    return fig


# --- data synthesis (input: synthesis.build_datasets / synthesis.validation_table) -----------------

def synthesis_histograms(group_sizes: list[int], target_scores: list[int]) -> Figure:
    """Side by side: how many groups of each size, and how often each target score 0-10 occurs."""
    fig = Figure(figsize=(8, 3), layout="constrained")
    sizes_ax, scores_ax = fig.subplots(1, 2)
    for ax, values, title, xlabel in ((sizes_ax, group_sizes, "Group sizes", "documents per group"),
                                      (scores_ax, target_scores, "Target scores", "score")):
        labels = sorted(set(values))
        ax.bar(labels, [values.count(v) for v in labels], color="tab:blue")
        ax.set(title=title, xlabel=xlabel, ylabel="count", xticks=labels)
    return fig


def teacher_validation_bars(table, column: str = "nDCG@10") -> Figure:
    """One bar per ranking of the pools (retriever, each teacher, fused): does fusion help?"""
    fig = Figure(figsize=(6, 3), layout="constrained")
    ax = fig.add_subplot()
    bars = ax.barh(list(table.index)[::-1], list(table[column])[::-1], color="tab:blue")
    ax.bar_label(bars, fmt="%.3f", padding=3)
    ax.set(title="Teachers as rerankers of the pools", xlabel=column, xlim=(0, 1.05))
    return fig
