"""Experiment helpers that decide what counts as a result: the paired bootstrap, the
dev-chosen retriever weight, learning curves of the model's own judgement, and one query's
ranking before and after training (grouprank_mini.experiments)."""
import json
import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from peft import PeftModel

from grouprank_mini import experiments, get_preset, llm, train
from grouprank_mini.collection import Collection
from grouprank_mini.rerank import GroupwiseReranker, RankResult, RerankedRun
from grouprank_mini.runs import ranked_ids


def test_bootstrap_interval_excludes_zero_only_for_a_consistent_gain():
    baseline = {str(q): 0.3 for q in range(40)}
    better = {q: v + 0.1 for q, v in baseline.items()}  # +0.1 on every query
    noisy = {q: v + (0.1 if int(q) % 2 else -0.1) for q, v in baseline.items()}  # +0.1 / -0.1 alternately
    gain = experiments.paired_bootstrap(better, baseline)
    assert gain["mean difference"] == pytest.approx(0.1) and gain["low"] > 0 and gain["wins"] == 40
    noise = experiments.paired_bootstrap(noisy, baseline)
    assert noise["mean difference"] == pytest.approx(0.0) and noise["low"] < 0 < noise["high"]
    assert (noise["wins"], noise["losses"]) == (20, 20)


def test_bootstrap_counts_a_missing_query_as_zero_and_rejects_empty():
    assert experiments.paired_bootstrap({}, {"q": 0.5})["mean difference"] == -0.5
    with pytest.raises(ValueError):
        experiments.paired_bootstrap({}, {})


def test_best_weight_is_chosen_from_the_model_scores_of_one_run():
    """q1: the model is right (d2 relevant), the retriever wrong: weight 0 wins; q2 is the same."""
    docs = {"d1": "a", "d2": "b"}
    collection = Collection("toy", docs, {"q1": "x", "q2": "y"}, {"q1": {"d2": 1}, "q2": {"d2": 1}})
    first_stage = {q: {"d1": 2.0, "d2": 1.0} for q in ("q1", "q2")}
    results = {q: RankResult({}, model_scores={"d1": 1.0, "d2": 9.0}) for q in ("q1", "q2")}
    weight, scores = experiments.best_weight(RerankedRun({}, results), first_stage, collection, weights=(0.0, 0.4, 0.95))
    assert weight == 0.0 and scores[0.0] == 1.0 and scores[0.95] < 1.0


def test_random_order_shuffles_only_the_reranked_head():
    """q1: its one relevant document is 2nd of 2 reranked candidates, so a shuffle puts it 1st (nDCG 1)
    or 2nd (1/log2(3)) with equal odds; q2: it is 3rd, below the depth of 2, so every shuffle leaves it there."""
    docs = {"d1": "a", "d2": "b", "d3": "c"}
    collection = Collection("toy", docs, {"q1": "x", "q2": "y"}, {"q1": {"d2": 1}, "q2": {"d3": 1}})
    run = {q: {"d1": 3.0, "d2": 2.0, "d3": 1.0} for q in ("q1", "q2")}
    floor = experiments.random_order(run, collection, ["q1", "q2"], depth=2, draws=400)
    second = 1 / math.log2(3)
    assert floor["q2"] == pytest.approx(0.5)  # 1/log2(4) on every draw
    assert second < floor["q1"] < 1 and floor["q1"] == pytest.approx((1 + second) / 2, abs=0.05)
    assert experiments.random_order(run, collection, ["q1"], depth=1) == pytest.approx({"q1": second})  # nothing to shuffle


# --- learning curves of the model's own judgement ------------------------------------------------
# A tiny random Qwen2 saved as a folder (so llm.load finds it through a preset) and fresh PEFT LoRA
# adapters of it laid out as training stages: <stage>/snapshots/step-<N>/ and a final adapter.

DOCS = {f"d{i}": f"document {i} on {topic}" for i, topic in
        enumerate(["wings", "flutter", "heat", "shock waves", "boundary layers", "nozzles"], 1)}
QRELS = {"q1": {"d2": 2, "d5": 1}, "q2": {"d1": 1}, "q3": {"d6": 0}}  # q3 has nothing relevant


@pytest.fixture(scope="module")
def curve_world(tmp_path_factory):
    """A preset on a tiny saved model, its collection and first stage, and two adapter seeds."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("curve")
    folder = llm.save_tiny_qwen2(root / "tiny-qwen2", llm.load_tokenizer())
    preset = get_preset("smoke", model=str(folder))
    collection = Collection("curve", DOCS, {"q1": "flutter", "q2": "wings", "q3": "heat"}, QRELS)
    first_stage = {q: {d: float(-i) for i, d in enumerate(DOCS)} for q in collection.queries}
    return {"root": root, "preset": preset, "collection": collection, "run": first_stage}


def save_lora(base_folder, target: Path, seed: int) -> Path:
    """A fresh LoRA adapter of the tiny model with random (non-zero) B matrices, so it changes the model."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    tuned = get_peft_model(llm.load_model(str(base_folder)), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, weight in tuned.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(weight, std=0.5)
    tuned.save_pretrained(str(target))
    return target


def fake_stage(world, name: str, steps: list[int], finished: bool = True, snapshots: bool = True) -> Path:
    """A stage output dir as train leaves it: snapshots at `steps`, and when finished the last
    one again as the final adapter with trainer_state.json."""
    stage = world["root"] / name
    model = world["preset"].model
    for step in steps if snapshots else []:
        save_lora(model, stage / "snapshots" / f"step-{step}", seed=step + len(name))
    if finished:
        save_lora(model, stage, seed=steps[-1] + len(name))  # same seed: the last snapshot's weights
        (stage / "trainer_state.json").write_text(json.dumps({"global_step": steps[-1]}))
    return stage


def test_own_reranker_ranks_by_the_model_alone():
    """w = 0: a model preferring b puts b first although the retriever puts a far ahead; the
    preset's w = 0.4 would keep a first."""
    preset = get_preset("smoke")
    own = experiments.own_reranker(None, None, preset)
    assert (own.scoring, own.preset.retriever_weight) == ("logprob", 0.0) and preset.retriever_weight == 0.4
    model, retriever = {"a": 4.0, "b": 5.0}, {"a": 1.0, "b": 0.0}
    assert max(own.final_scores(model, retriever), key=own.final_scores(model, retriever).get) == "b"
    mixed = GroupwiseReranker(None, preset).final_scores(model, retriever)
    assert max(mixed, key=mixed.get) == "a"


def test_adapter_on_leaves_the_shared_base_as_it_was(curve_world, tmp_path):
    base = llm.load_model(curve_world["preset"].model)
    adapter = save_lora(curve_world["preset"].model, tmp_path / "a", seed=1)
    ids = torch.tensor([[1, 2, 3, 4]])
    before = base(input_ids=ids).logits
    with experiments.adapter_on(base, adapter) as tuned:
        assert not torch.allclose(tuned(input_ids=ids).logits, before)
    assert torch.equal(base(input_ids=ids).logits, before) and not hasattr(base, "peft_config")


def test_learning_curve_rows_steps_order_and_scores(curve_world, capsys, monkeypatch):
    sft = fake_stage(curve_world, "sft", [1, 2])
    grpo = fake_stage(curve_world, "grpo", [1, 3], finished=False)
    stages = {"SFT": (None, sft), "GRPO": (sft, grpo)}
    models = []
    judge = experiments.own_judgement
    monkeypatch.setattr(experiments, "own_judgement",
                        lambda model, *args: models.append(model) or judge(model, *args))
    curve = experiments.learning_curve(curve_world["preset"], stages, curve_world["collection"], curve_world["run"],
                                       ["q1", "q2", "q3"])
    assert list(zip(curve["stage"], curve["step"])) == [("SFT", 0), ("SFT", 1), ("SFT", 2),
                                                         ("GRPO", 0), ("GRPO", 1), ("GRPO", 3)]
    assert curve["adapter"].iloc[0] == "base model" and curve["adapter"].iloc[2].endswith("step-2")
    assert (curve["queries"] == 2).all()  # q3 has no relevant document: not judged
    for _, row in curve.iterrows():
        assert set(row["per query"]) == {"q1", "q2"} and all(0.0 <= v <= 1.0 for v in row["per query"].values())
        assert row["nDCG@10"] == pytest.approx(sum(row["per query"].values()) / 2)
    assert curve["per query"].iloc[3] == curve["per query"].iloc[2]  # GRPO starts where SFT ended...
    assert len(models) == 5 and len({id(m) for m in models[1:]}) == 4  # ...without a 6th run; a fresh wrap per adapter
    assert not isinstance(models[0], PeftModel) and all(isinstance(m, PeftModel) for m in models[1:])
    assert "no adapter snapshots" not in capsys.readouterr().out


def test_learning_curve_scores_only_the_points_it_was_not_given(curve_world, monkeypatch, capsys):
    sft = fake_stage(curve_world, "sft-known", [1, 2])
    models = []
    judge = experiments.own_judgement
    monkeypatch.setattr(experiments, "own_judgement",
                        lambda model, *args: models.append(model) or judge(model, *args))
    base_scores, end_scores = {"q1": 0.125, "q2": 0.5}, {"q1": 1.0, "q2": 0.25}
    curve = experiments.learning_curve(curve_world["preset"], {"SFT": (None, sft)}, curve_world["collection"],
                                       curve_world["run"], ["q1", "q2", "q3"], known={None: base_scores, sft: end_scores})
    assert curve["per query"].iloc[0] == base_scores
    assert curve["per query"].iloc[2] == end_scores  # known as the final adapter, which is the last snapshot
    assert len(models) == 1 and set(curve["per query"].iloc[1]) == {"q1", "q2"}  # only step 1 was scored
    assert "3 curve points: 1 scored here, 2 shared" in capsys.readouterr().out


def test_scored_points_read_own_judgement_from_a_table_s_token_probability_scores(curve_world, monkeypatch):
    preset, collection, run = curve_world["preset"], curve_world["collection"], curve_world["run"]
    model, tokenizer = llm.load(preset)
    sft = curve_world["root"] / "kept-sft"
    monkeypatch.setattr(experiments, "adapter_folders", lambda p: {"SFT": sft, "SFT+GRPO": curve_world["root"] / "g"})
    table = experiments.rerank_systems({"zero-shot": model, "SFT": model}, tokenizer, preset, collection, run,
                                       ["q1", "q2"], scorings=("logprob",))
    table["SFT+GRPO (generate)"] = table["SFT (logprob)"]  # written answers are not read as own judgement
    known = experiments.scored_points(preset, table, run, collection, ["q1", "q2"])
    assert set(known) == {None, sft}
    assert known[None] == experiments.own_judgement(model, tokenizer, preset, collection, run, ["q1", "q2"])
    with pytest.raises(ValueError, match="q3"):
        experiments.scored_points(preset, table, run, collection, ["q1", "q2", "q3"])


def test_curve_summary_ends_a_stage_at_the_snapshot_the_next_stage_started_from():
    def per(v):
        return {"q1": v, "q2": v}

    curve = pd.DataFrame({"stage": ["SFT"] * 3 + ["GRPO"] * 2, "step": [0, 1, 2, 0, 1],
                          "adapter": ["base", "s1", "s2", "s1", "g1"],
                          "per query": [per(0.1), per(0.5), per(0.2), per(0.5), per(0.6)]})
    summary = experiments.curve_summary(curve, samples=100)
    assert summary.loc["SFT", "to"] == "SFT step 1" and summary.loc["SFT", "mean difference"] == pytest.approx(0.4)
    assert summary.loc["GRPO", "from"] == "GRPO step 0" and summary.loc["GRPO", "mean difference"] == pytest.approx(0.1)
    assert summary.loc["all stages", "mean difference"] == pytest.approx(0.5)
    alone = experiments.curve_summary(curve[curve["stage"] == "SFT"], samples=100)
    assert alone.loc["SFT", "to"] == "SFT step 2"  # no later stage: its last point


def test_a_stage_without_snapshots_gives_its_end_point_and_says_so(curve_world, capsys):
    old = fake_stage(curve_world, "old-sft", [4], snapshots=False)
    points = experiments.stage_points(None, old)
    assert points == [(0, None), (4, old)]
    assert f"{old}: no adapter snapshots" in capsys.readouterr().out


def test_missing_stage_and_start_folders_are_named(curve_world):
    missing = curve_world["root"] / "never-trained"
    with pytest.raises(FileNotFoundError, match="never-trained"):
        experiments.stage_points(None, missing)
    sft = fake_stage(curve_world, "sft-2", [1])
    with pytest.raises(FileNotFoundError, match="no-start"):
        experiments.stage_points(curve_world["root"] / "no-start", sft)
    with pytest.raises(ValueError, match="no training stage"):
        experiments.learning_curve(curve_world["preset"], {}, curve_world["collection"], curve_world["run"], ["q1"])


def dev_curve(scores) -> pd.DataFrame:
    """One SFT stage scored on 2 dev queries at steps 0, 1, 2, 3."""
    return pd.DataFrame({"stage": "SFT", "step": [0, 1, 2, 3], "nDCG@10": scores, "queries": 2})


def test_keep_on_dev_keeps_the_best_trained_snapshot_and_records_it(curve_world):
    sft = fake_stage(curve_world, "sft-keep", [1, 2, 3])
    preset = curve_world["preset"]
    # step 0 (the base model) scores best but is no SFT model; 0.6 ties at steps 2 and 3: the later one
    assert experiments.keep_on_dev(preset, dev_curve([0.9, 0.4, 0.6, 0.6]), sft) == (3, sft)  # the final adapter itself
    step, kept = experiments.keep_on_dev(preset, dev_curve([0.1, 0.7, 0.6, 0.5]), sft)
    assert (step, kept) == (1, sft / "snapshots" / "step-1") and train.kept_adapter(sft) == kept
    assert "best-dev: own judgement 0.7000 on 2 dev queries" in (sft / train.KEPT_FILE).read_text()
    last = get_preset(preset, sft_keep="last")
    assert experiments.keep_on_dev(last, dev_curve([0.1, 0.7, 0.6, 0.5]), sft) == (3, sft)
    with pytest.raises(ValueError, match="sft_keep is 'best'"):
        experiments.keep_on_dev(get_preset(preset, sft_keep="best"), dev_curve([0.1, 0.7, 0.6, 0.5]), sft)


def test_kept_adapter_without_a_choice_is_the_end_and_a_bad_record_is_named(curve_world):
    sft = fake_stage(curve_world, "sft-kept", [2, 4])
    assert train.kept_adapter(sft) == sft
    (sft / train.KEPT_FILE).write_text('{"step": 3}')
    with pytest.raises(FileNotFoundError, match="keeps step 3"):
        train.kept_adapter(sft)
    (sft / train.KEPT_FILE).write_text('{"stp": 2}')
    with pytest.raises(ValueError, match="chosen.json"):
        train.kept_adapter(sft)
    with pytest.raises(ValueError, match="no snapshot of step 5"):
        train.keep_snapshot(sft, 5, "test")


def test_grpo_and_the_sft_row_start_from_the_kept_snapshot(curve_world, monkeypatch, tmp_path):
    monkeypatch.setenv("GROUPRANK_CACHE", str(tmp_path))
    preset = curve_world["preset"]
    sft = fake_stage({**curve_world, "root": tmp_path / "adapters" / preset.name}, "sft", [1, 2])
    grpo = fake_stage({**curve_world, "root": tmp_path / "adapters" / preset.name}, "grpo", [1])
    train.keep_snapshot(sft, 1, "test")
    stages = experiments.curve_stages(preset)
    assert stages == {"SFT": (None, sft), "GRPO": (sft / "snapshots" / "step-1", grpo)}
    assert experiments.adapter_folders(preset)["SFT"] == sft / "snapshots" / "step-1"


def hand_curve(start: float, sft_gain: float, grpo_gain: float, queries: int = 30) -> pd.DataFrame:
    """A learning curve without a model: per-query scores that move by the given amounts."""
    def point(stage, step, shift, adapter):
        scores = {str(q): start + shift + (0.01 if q % 2 else -0.01) for q in range(queries)}
        return {"stage": stage, "step": step, "adapter": adapter, "per query": scores}
    return pd.DataFrame([point("SFT", 0, 0, "base"), point("SFT", 4, sft_gain, "sft-4"),
                         point("GRPO", 0, sft_gain, "sft-4"), point("GRPO", 2, sft_gain + grpo_gain, "grpo-2")])


def test_curve_summary_compares_each_stage_and_the_whole_curve():
    summary = experiments.curve_summary(hand_curve(0.3, 0.1, 0.0), samples=2000)
    assert list(summary.index) == ["SFT", "GRPO", "all stages"]
    assert (summary.loc["all stages", "from"], summary.loc["all stages", "to"]) == ("SFT step 0", "GRPO step 2")
    assert summary.loc["SFT", "verdict"] == "a gain beyond noise"
    assert summary.loc["GRPO", "verdict"].startswith("within noise")
    assert summary.loc["SFT", "mean difference"] == pytest.approx(0.1) and summary.loc["SFT", "wins"] == 30
    loss = experiments.curve_summary(hand_curve(0.5, -0.2, 0.0), samples=2000)
    assert loss.loc["SFT", "verdict"] == "a loss beyond noise"


def test_bootstrap_sentence_carries_the_numbers():
    result = experiments.paired_bootstrap({"a": 0.5, "b": 0.6}, {"a": 0.2, "b": 0.2}, samples=500)
    sentence = experiments.bootstrap_sentence(result, "SFT step 4", "zero-shot")
    assert sentence.startswith("SFT step 4 vs zero-shot: +0.350 nDCG@10, 95% interval [+0.300, +0.400]")
    assert "2 wins / 0 losses over 2 queries: a gain beyond noise." in sentence


def test_bootstrap_sentence_shows_a_bound_that_three_decimals_would_round_to_zero():
    result = {"mean difference": -0.009, "low": -0.018, "high": -0.0002, "wins": 1, "losses": 3, "queries": 8}
    sentence = experiments.bootstrap_sentence(result, "SFT", "BM25")
    assert "[-0.018, -0.0002]" in sentence and sentence.endswith("a loss beyond noise.")
    assert "1 win / 3 losses over 8 queries" in sentence
    assert "[+0.000, +0.300]" in experiments.bootstrap_sentence({**result, "low": 0.0, "high": 0.3}, "a", "b")
    assert "[-0.018, -3e-06]" in experiments.bootstrap_sentence({**result, "high": -0.000003}, "a", "b")


# --- one query before and after training ----------------------------------------------------------

def test_example_query_needs_a_relevant_candidate_and_takes_the_largest_change():
    collection = Collection("toy", DOCS, {"q1": "x", "q2": "y", "q3": "z", "q4": "w"},
                            {"q1": {"d1": 1}, "q2": {"d6": 1}, "q3": {"d2": 1}, "q4": {"d3": 1}})
    first_stage = {q: {d: float(-i) for i, d in enumerate(DOCS)} for q in collection.queries}  # d1 first, d6 last
    before = {"q1": 0.5, "q2": 0.0, "q3": 0.2, "q4": 0.4}
    after = {"q1": 0.6, "q2": 0.9, "q3": 0.0, "q4": 0.6}
    # q2 moved most, but its relevant d6 is not among the top 3 candidates; q3 and q4 tie at 0.2: q3 comes first
    assert experiments.example_query(after, before, collection, first_stage, depth=3) == "q3"
    assert experiments.example_query(after, before, collection, first_stage, depth=6) == "q2"
    with pytest.raises(ValueError, match="top 1 candidates"):
        experiments.example_query(after, {"q2": 0.0}, collection, first_stage, depth=1)


def test_ranking_table_shows_scores_and_the_new_rank_of_the_last_system():
    long_text = "a very long opening line about the aerodynamic heating of blunt bodies at hypersonic speed\nsecond"
    collection = Collection("toy", {"d1": "short one", "d2": long_text, "d3": "third"}, {"q": "x"},
                            {"q": {"d2": 2}})
    first_stage = {"q": {"d1": 3.0, "d2": 2.0, "d3": 1.0}}
    zero = RankResult({"d1": 0.9, "d2": 0.5, "d3": 0.1}, model_scores={"d1": 9.0, "d2": 5.0, "d3": 1.0})
    sft = RankResult({"d1": 0.2, "d2": 0.8, "d3": 0.5}, model_scores={"d1": 2.0, "d2": 8.0, "d3": 5.0})
    table = experiments.ranking_table({"zero-shot": zero, "SFT": sft}, collection, "q", first_stage, depth=3)
    assert list(table.index) == ["d1", "d2", "d3"]
    assert list(table.columns) == ["document", "gain", "first-stage rank", "zero-shot score", "SFT score", "SFT rank"]
    assert table["gain"].tolist() == [0, 2, 0] and table["SFT rank"].tolist() == [3, 1, 2]
    assert table.loc["d2", "document"].endswith("…") and len(table.loc["d2", "document"]) == 70
    assert table.loc["d1", "zero-shot score"] == 9.0
    with pytest.raises(ValueError, match="SFT gave no score to document d3"):
        experiments.ranking_table({"SFT": RankResult({}, model_scores={"d1": 1.0, "d2": 2.0})}, collection, "q",
                                  first_stage, depth=3)


def test_dev_weight_is_the_best_weight_on_dev_and_reweighting_needs_no_model(curve_world):
    preset, collection, run = curve_world["preset"], curve_world["collection"], curve_world["run"]
    model, tokenizer = llm.load(preset)
    weight, by_weight = experiments.dev_weight(model, tokenizer, preset, collection, run, ["q1"])
    assert weight in by_weight and by_weight[weight] == max(by_weight.values()) and set(by_weight) == {0.0, 0.2, 0.4, 0.6, 0.8}
    shallow = replace(preset, rerank_depth=4)  # 4 of 6 candidates: the retriever is normalised over the 4 reranked
    scored = experiments.rerank_systems({"m": model}, tokenizer, shallow, collection, run, ["q1", "q2"],
                                        scorings=("logprob",))["m (logprob)"]
    assert scored.reweighted(run, shallow.retriever_weight) == scored.run  # the weight it was scored with: the same run
    alone = scored.reweighted(run, 0.0)
    for q, result in scored.results.items():
        head = ranked_ids(alone[q])[:4]
        assert head == sorted(result.model_scores, key=lambda d: -result.model_scores[d])  # w = 0: the model's order
        assert ranked_ids(alone[q])[4:] == ranked_ids(run[q])[4:]  # the tail kept


def test_the_reward_sentence_counts_batches_and_the_steps_they_served():
    # grpo_num_iterations 2: the steps that reuse a batch of completions log no reward
    log = pd.DataFrame({"reward": [1.0, None, 1.2, None, 1.4, None], "loss": [0.1] * 6}, index=range(1, 7))
    sentence = experiments.reward_trend_sentence(log, batch_size=8)
    assert sentence == ("rolling mean of the reward: 1.000 at step 1 -> 1.300 at step 5: "
                        "over 3 batches of 8 completions (6 optimisation steps) it rises")


def test_trend_names_the_direction_and_says_when_there_is_none():
    assert experiments.trend([0.30, 0.31, 0.35]) == "rises"
    assert experiments.trend([0.35, 0.35, 0.30]) == "falls"
    assert experiments.trend([0.30, 0.40, 0.35]) == "moves up and down"
    assert experiments.trend([0.300, 0.303, 0.301]) == "stays flat"


def test_sweep_sentence_is_printed_from_the_table():
    table = pd.DataFrame({"nDCG@10": [0.5, 0.4, 0.45], "seconds/query": [3.0, 1.5, 1.0]},
                         index=pd.Index([1, 5, 10], name="group_size"))
    sentence = experiments.sweep_sentence(table, "group size", 4)
    assert sentence.startswith("nDCG@10 moves up and down with the group size (1: 0.500, 5: 0.400, 10: 0.450) on 4 queries")
    assert "up to 0.250" in sentence and "3.00 -> 1.00" in sentence
