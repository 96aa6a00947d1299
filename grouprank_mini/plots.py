"""Small plotting helpers for the notebooks; each returns a matplotlib Figure.

Figures are built without pyplot, so a notebook shows a returned figure once and nothing
is left open between cells.
"""
from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def show_figures_in_notebooks() -> None:
    """Have IPython draw a returned Figure as a PNG. Importing pyplot would set this up as a
    side effect; these helpers avoid pyplot, so they ask matplotlib-inline for it directly."""
    try:
        from IPython import get_ipython
    except ImportError:  # plain Python: nothing to draw into
        return
    if get_ipython() is not None:
        from matplotlib_inline.backend_inline import set_matplotlib_formats
        set_matplotlib_formats("png")


show_figures_in_notebooks()

# Hollow markers of distinct shapes: systems named in a legend stay visible when they overlap.
BENCHMARK_MARKERS = "osD^vP<>Xh*p"


# --- training curves (input: train.history(output_dir), a DataFrame indexed by step) ---------------

def _step_axis(ax) -> None:
    """Label the x axis "step" with whole-number ticks: a run of 2 steps has no step 1.5."""
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _curves(history, columns: dict[str, str], title: str, ylabel: str) -> Figure:
    """One line per present column ({column: label}), against the training step."""
    fig = Figure(figsize=(7.5, 3.5), layout="constrained")  # wide enough for the legend beside the axes
    ax = fig.add_subplot()
    for column, label in columns.items():
        if column in history:
            series = history[column].dropna()
            ax.plot(series.index, series.values, marker=".", label=label)
    ax.set(title=title, ylabel=ylabel)
    _step_axis(ax)
    if ax.lines:
        _legend_outside(ax)
    return fig


def _legend_outside(ax) -> None:
    """The legend to the right of the axes, where no line can run under it."""
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9)


def plot_loss(history) -> Figure:
    """Training loss and, when the run was evaluated, eval loss."""
    return _curves(history, {"loss": "loss", "eval_loss": "eval_loss"}, "Loss", "loss")


def reward_columns(history) -> dict[str, str]:
    """{column: label} for the total reward and its terms (logged as "reward/<term>" through
    TRL's log_metric); each reward function's own mean too, when there are several."""
    per_function = [c for c in history.columns if c.startswith("rewards/") and c.endswith("/mean")]
    columns = {"reward": "total"}
    if len(per_function) > 1:  # with one function its mean is the total again
        columns.update({c: c.split("/")[1] for c in per_function})
    columns.update({c: c.split("/", 1)[1] for c in history.columns if c.startswith("reward/")})
    return columns


def rolling_window(steps: int) -> int:
    """Steps per rolling mean: a fifth of the run, at least 2 (1 would only redraw the raw curve)."""
    return max(2, round(steps / 5))


def rolling_reward(history):
    """The total reward's trailing rolling mean over the steps that sampled completions, indexed
    by step (`rolling_window` of them per mean). With grpo_num_iterations > 1 the steps that reuse
    a batch log no reward, so the window counts batches of completions, not optimisation steps."""
    total = history["reward"].dropna()
    return total.rolling(rolling_window(len(total)), min_periods=1).mean()  # the first average what exists so far


def plot_rewards(history, columns: dict[str, str] | None = None) -> Figure:
    """GRPO reward over steps, one line per term (pass {column: label} to choose), and the total's
    trailing rolling mean: a single step's reward is noisy, the trend is what training changed."""
    fig = _curves(history, columns or reward_columns(history), "Reward", "mean over completions")
    if "reward" in history and history["reward"].count() >= 2:
        smooth = rolling_reward(history)
        ax = fig.axes[0]
        ax.plot(smooth.index, smooth.values, color="black", linewidth=2,
                label=f"total, rolling mean of {rolling_window(len(smooth))} batches")
        _legend_outside(ax)
    return fig


# Metric names: TRL 1.16's (grpo_trainer.py) and the two train.SpreadLoggingGRPOTrainer adds.
GROUP_STD, GROUPS_ZERO_STD, BATCH_STD = "group_reward_std", "frac_groups_zero_std", "reward_std"


def plot_reward_spread(history) -> Figure:
    """Do the completions of one prompt earn different rewards? GRPO learns only from that.

    Left axis: the mean std of the rewards within a group and, dashed, TRL's std over the whole
    batch (it adds the spread between prompts, which GRPO cannot use). Right axis: the share of
    groups whose completions all earned the same reward (their advantages are all 0).
    """
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.add_subplot()
    twin = ax.twinx()
    lines = []
    for axis, column, style in ((ax, GROUP_STD, dict(color="tab:blue", label="std within a group")),
                                (ax, BATCH_STD, dict(color="tab:blue", linestyle="--", alpha=0.5,
                                                     label="std over the whole batch (TRL's reward_std)")),
                                (twin, GROUPS_ZERO_STD, dict(color="tab:red", label="groups without spread (right)"))):
        if column in history:
            series = history[column].dropna()
            lines += axis.plot(series.index, series.values, marker=".", **style)
    ax.set(title="Reward spread within groups", ylabel="reward std")
    twin.set_ylabel("share of groups", color="tab:red")
    twin.set_ylim(-0.02, 1.02)
    _step_axis(ax)
    if lines:  # one legend for both axes: each axis would otherwise only know its own lines
        ax.legend(lines, [line.get_label() for line in lines], fontsize=8)
    return fig


def plot_format_failures(history, column: str) -> Figure:
    """Share of completions whose answer could not be read, over steps (`column`: the metric
    the reward logs it as, rewards.FORMAT_FAILURE)."""
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


def quality_vs_speed(table, queries: int | None = None) -> Figure:
    """nDCG@10 against seconds per query, one marker per paradigm (experiments.compare_paradigms),
    named in a legend: labels written beside the points overlap when two paradigms cost alike."""
    fig = Figure(figsize=(6.5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    for i, (name, row) in enumerate(table.iterrows()):
        seconds = row.get("seconds/query", 0.0)
        seconds = 0.0 if seconds != seconds else seconds  # the first stage has no LLM time (NaN)
        ax.scatter(seconds, row["nDCG@10"], s=90, marker=BENCHMARK_MARKERS[i % len(BENCHMARK_MARKERS)],
                   facecolors="none", edgecolors=f"C{i % 10}", linewidths=2, label=name)
    title = "Quality vs speed" + (f" ({queries} queries)" if queries else "")
    ax.set(title=title, xlabel="seconds per query (LLM)", ylabel="nDCG@10")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def interpolation(model_scores: dict[str, float], retriever_scores: dict[str, float], final_scores: dict[str, float],
                  weight: float, relevant: set[str], title: str) -> Figure:
    """How the final score is made, one line per candidate: the retriever's score min-max
    normalised, the model's score / 10, and the final score (groups.interpolate with `weight`).
    Relevant documents (human gain > 0) in colour, the rest in grey."""
    from .runs import minmax

    norm, final = minmax(retriever_scores), final_scores
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for doc in model_scores:
        hit = doc in relevant
        ax.plot([0, 1, 2], [norm.get(doc, 0.0), model_scores[doc] / 10, final[doc]], marker="o",
                color="tab:orange" if hit else "tab:gray", alpha=0.9 if hit else 0.45, linewidth=2 if hit else 1,
                zorder=3 if hit else 2)
    ax.plot([], [], color="tab:orange", marker="o", label="relevant (human gain > 0)")
    ax.plot([], [], color="tab:gray", marker="o", label="not relevant")
    ax.set_xticks([0, 1, 2], ["retriever\n(min-max normalised)", "model score / 10", f"final (w = {weight:g})"])
    ax.set(title=title, ylabel="score", ylim=(-0.05, 1.05))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
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
    """One bar per ranking of the pools (retriever, each teacher, fused): does fusion help? The
    table's query count (`synthesis.validation_table`'s "queries" column) goes into the title."""
    fig = Figure(figsize=(6, 3), layout="constrained")
    ax = fig.add_subplot()
    bars = ax.barh(list(table.index)[::-1], list(table[column])[::-1], color="tab:blue")
    ax.bar_label(bars, fmt="%.3f", padding=3)
    queries = f" ({int(table['queries'].max())} queries)" if "queries" in table else ""
    ax.set(title=f"Teachers as rerankers of the pools{queries}", xlabel=column, xlim=(0, 1.05))
    return fig


def sweep_plot(table, field: str, title: str) -> Figure:
    """nDCG@10 (left axis) and seconds per query (right axis) against a swept preset field, whose
    values (group sizes, pass counts: whole numbers) are the ticks; one legend names both lines."""
    fig = Figure(figsize=(6, 3.4), layout="constrained")
    ax = fig.add_subplot()
    quality = ax.plot(table.index, table["nDCG@10"], marker="o", color="tab:blue", label="nDCG@10 (left)")
    ax.set(title=title, xlabel=field, ylabel="nDCG@10", xticks=list(table.index))
    twin = ax.twinx()
    cost = twin.plot(table.index, table["seconds/query"], marker="s", linestyle="--", color="tab:gray",
                     label="seconds / query (right)")
    twin.set_ylabel("seconds / query", color="tab:gray")
    ax.legend(handles=quality + cost, loc="best", fontsize=8)
    return fig


def calibration_plot(table, queries: int | None = None) -> Figure:
    """Model score per human gain level (experiments.score_calibration): rising boxes = comparable
    scores; `queries`, when given, goes into the title."""
    fig = Figure(figsize=(5.5, 3.2), layout="constrained")
    ax = fig.add_subplot()
    gains = sorted(table["gain"].unique())
    ax.boxplot([table.loc[table["gain"] == g, "score"] for g in gains], tick_labels=[str(g) for g in gains])
    title = "Are scores from different groups comparable?" + (f" ({queries} queries)" if queries else "")
    ax.set(title=title, xlabel="human gain (0 = not relevant)",
           ylabel="model score (0-10)")
    return fig


def win_loss(system: dict[str, float], baseline: dict[str, float], title: str) -> Figure:
    """Per-query difference system − baseline, sorted: green bars are wins, red bars losses."""
    deltas = sorted((system.get(q, 0.0) - baseline.get(q, 0.0) for q in baseline), reverse=True)
    fig = Figure(figsize=(7, 3), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(len(deltas)), deltas, color=["tab:green" if d > 0 else "tab:red" for d in deltas])
    ax.axhline(0, color="black", linewidth=0.8)
    wins, losses = sum(d > 0 for d in deltas), sum(d < 0 for d in deltas)
    ax.set(title=f"{title}: {wins} wins, {losses} losses", xlabel="queries", ylabel="Δ nDCG@10")
    return fig


# --- benchmarks (input: the rows of benchmarks/rerank_paradigms.py) -------------------------------

def paradigm_benchmark(table, subtitle: str) -> Figure:
    """nDCG@10 against seconds per query, one hollow marker per row of `table`, named in a legend.

    The time axis is logarithmic so BM25's milliseconds and pointwise's minutes both stay
    readable. A legend rather than labels beside the points: rows that share a model run (with
    and without interpolation) sit on one vertical line and may coincide, and hollow markers of
    different shapes stay visible on top of each other. `subtitle` names model, data and machine.
    """
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for i, (name, row) in enumerate(table.iterrows()):
        ax.scatter(row["seconds/query"], row["nDCG@10"], s=80, marker=BENCHMARK_MARKERS[i % len(BENCHMARK_MARKERS)],
                   facecolors="none", edgecolors=f"C{i % 10}", linewidths=1.8, label=name)
    ax.set_xscale("log")
    ax.set(xlabel="seconds per query (log scale)", ylabel="nDCG@10")
    ax.set_title(f"Quality vs speed\n{subtitle}", fontsize=9)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    return fig


def score_histograms(scores: dict[str, list[float]]) -> Figure:
    """Share of each 0-10 score, one panel per source (e.g. SFT, SFT+GRPO, target)."""
    fig = Figure(figsize=(3 * len(scores), 2.8), layout="constrained")
    axes = fig.subplots(1, len(scores), sharey=True, squeeze=False)[0]
    for ax, (name, values) in zip(axes, scores.items()):
        ax.hist([round(v) for v in values], bins=[b - 0.5 for b in range(12)], density=True, color="tab:blue")
        ax.set(title=name, xlabel="score", xticks=range(0, 11, 2))
    axes[0].set_ylabel("share")
    return fig


# --- learning curves (input: experiments.learning_curve) -------------------------------------------

def learning_curve(curve, first_stage: float | None = None, first_stage_label: str = "first stage",
                   chance: float | None = None) -> Figure:
    """nDCG@10 against training step, one line per stage with a marker at each evaluated point.
    Stages are laid end to end: a stage's step 0 sits on the point of the model it starts from
    (same "adapter", e.g. the SFT snapshot kept on dev queries), else on the previous stage's last
    step, so GRPO's steps follow SFT's. `first_stage`: the retriever's own score, dashed; `chance`:
    the same candidates in random order (`experiments.random_order`), dotted: the two lines a
    model's own judgement lies between."""
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    end, at = 0, {}  # at: a point's model (its "adapter") -> where it was drawn
    for stage, points in curve.groupby("stage", sort=False):
        models = list(points["adapter"]) if "adapter" in points else []
        x = points["step"] + (at.get(models[0], end) if models else end)
        ax.plot(x, points["nDCG@10"], marker="o", label=stage)
        at.update(zip(models, x))
        end = max(end, int(x.max()))
    if first_stage is not None:
        ax.axhline(first_stage, color="gray", linestyle="--", label=first_stage_label)
    if chance is not None:
        ax.axhline(chance, color="gray", linestyle=":", label="same candidates, random order")
    queries = sorted(set(curve["queries"]))
    count = str(queries[0]) if len(queries) == 1 else f"{queries[0]}-{queries[-1]}"  # one count, unless points differ
    ax.set(title=f"Own judgement over training ({count} queries)", xlabel="training step (stages end to end)",
           ylabel="nDCG@10")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # a run of 2 steps has no step 1.5
    ax.legend()
    return fig
