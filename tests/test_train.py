"""LoRA SFT, GRPO, resume, 4-bit gradients and the CLI (grouprank_mini.train).

Most tests train a 2-layer random Llama with the real SmolLM2 tokenizer (seconds per run);
only the 4-bit gradient check and the CLI smoke run load the embedded SmolLM2.
"""
import json
import shutil
from types import SimpleNamespace
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import PeftModel
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainingArguments
from trl import GRPOConfig

from grouprank_mini import experiments, get_preset, llm, plots, prompts, runtime, train
from grouprank_mini.rewards import FORMAT_FAILURE

TARGETS = [[7, 2, 0], [1, 9, 4], [5, 5, 10], [0, 3, 8]]


@pytest.fixture(scope="module")
def tokenizer():
    return llm.load_tokenizer()


def _messages(i: int) -> list[dict]:
    docs = [f"Document {i}.{j} on boundary layers, wing {j} and heat transfer." for j in range(3)]
    return prompts.groupwise_messages(f"How does flow separate on wing {i}?", docs, max_chars=120)


def sft_rows(n: int = 8) -> Dataset:
    return Dataset.from_list([
        {"prompt": _messages(i), "completion": [{"role": "assistant", "content": prompts.answer_text(TARGETS[i % 4])}],
         "qid": str(i), "doc_ids": [f"d{i}.{j}" for j in range(3)], "target_scores": TARGETS[i % 4]}
        for i in range(n)])


def rl_rows(n: int = 8) -> Dataset:
    return Dataset.from_list([
        {"prompt": _messages(i), "qid": str(i), "doc_ids": [f"d{i}.{j}" for j in range(3)],
         "target_scores": TARGETS[i % 4], "gains": [float(s > 4) for s in TARGETS[i % 4]]}
        for i in range(n)])


def varied_reward(prompts, completions, target_scores, gains, log_metric, **kwargs):
    """Random-model text never parses, so the real reward is constant there; this one varies."""
    variety = [len(set(text)) / max(len(text), 1) for text in (c[0]["content"] for c in completions)]
    log_metric("reward/variety", sum(variety) / len(variety))
    log_metric(FORMAT_FAILURE, 1.0)
    return variety


PRESET = get_preset("smoke", sft_max_steps=5, save_steps=2, lora_r=4, lora_alpha=8, sft_lr=1e-3,
                    grpo_max_steps=4, grpo_lr=1e-3, grpo_num_generations=2, grpo_batch_size=4,
                    grpo_max_completion_length=6)


@pytest.fixture(scope="module")
def sft_run(tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    path = train.train_sft(PRESET, sft_rows(), eval_ds=sft_rows(2), output_dir=out,
                           model=llm.tiny_random_model(tokenizer), tokenizer=tokenizer)
    return path


def lora_tensors(folder) -> dict:
    return load_file(str(folder / "adapter_model.safetensors"))


# --- SFT ---------------------------------------------------------------------------------------

def test_sft_loss_covers_only_the_answer(tokenizer, tmp_path):
    trainer = train.sft_trainer(PRESET, sft_rows(2), output_dir=tmp_path,
                                model=llm.tiny_random_model(tokenizer), tokenizer=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    n_prompt = len(tokenizer.apply_chat_template(_messages(0), add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"])
    assert (labels[:n_prompt] == -100).all()
    assert torch.equal(labels[n_prompt:], ids[n_prompt:])
    answer = tokenizer.decode(ids[n_prompt:])
    assert answer.startswith(prompts.answer_text(TARGETS[0])) and "<|im_end|>" in answer  # learns to stop


class DigitOracle(torch.nn.Module):
    """A stand-in model that knows every digit that comes next and nothing else."""
    device = torch.device("cpu")

    def __init__(self, tokenizer):
        super().__init__()
        self.digits, self.vocab = torch.tensor(tokenizer.convert_tokens_to_ids(list("0123456789"))), len(tokenizer)

    def forward(self, input_ids):
        following = input_ids[0, 1:]
        logits = torch.zeros(1, input_ids.shape[1], self.vocab)
        known = torch.isin(following, self.digits)
        logits[0, :-1][known, following[known]] = 30.0
        return SimpleNamespace(logits=logits)


def test_loss_by_token_kind_splits_the_answer_loss_into_score_digits_and_form(tokenizer, tmp_path):
    row = sft_rows(3).select([2])  # targets [5, 5, 10]: four score digits, since "10" is two
    trainer = train.sft_trainer(PRESET, row, output_dir=tmp_path, model=llm.tiny_random_model(tokenizer),
                                tokenizer=tokenizer)
    answer_tokens = int((trainer.data_collator([trainer.train_dataset[0]])["labels"] != -100).sum())
    parts = train.loss_by_token_kind(trainer, DigitOracle(tokenizer))
    assert parts["share of score digits"] == pytest.approx(4 / answer_tokens)
    assert parts["score digits"] < 1e-3  # each digit read at the position that predicts it
    assert parts["form"] > 5  # mostly tokens the oracle does not know (uniform: ln of the vocabulary)


def test_hidden_bars_leave_a_trainer_without_progress_bar_or_log_printout(tokenizer, tmp_path, monkeypatch):
    from transformers import PrinterCallback, ProgressCallback
    from transformers.utils.notebook import NotebookProgressCallback

    def callbacks(trainer):
        return {type(c) for c in trainer.callback_handler.callbacks}

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    shown = train.sft_trainer(PRESET, sft_rows(2), output_dir=tmp_path,
                              model=llm.tiny_random_model(tokenizer), tokenizer=tokenizer)
    assert callbacks(shown) & {ProgressCallback, NotebookProgressCallback}
    monkeypatch.setenv("TQDM_DISABLE", "1")  # what `make demo` sets for its notebooks
    hidden = train.sft_trainer(PRESET, sft_rows(2), output_dir=tmp_path,
                               model=llm.tiny_random_model(tokenizer), tokenizer=tokenizer)
    assert not callbacks(hidden) & {ProgressCallback, NotebookProgressCallback, PrinterCallback}


def test_sft_trains_evaluates_checkpoints_and_saves_a_plain_peft_adapter(sft_run, tokenizer):
    log = train.history(sft_run)
    assert log["loss"].dropna().index.tolist() == [1, 2, 3, 4, 5]
    assert log["eval_loss"].dropna().index.tolist() == [1, 2, 3, 4, 5]  # train.SFT_EVALS points per run
    assert sorted(p.name for p in sft_run.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]  # last two
    assert (sft_run / "tokenizer_config.json").is_file()
    tuned = PeftModel.from_pretrained(llm.tiny_random_model(tokenizer), str(sft_run))
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: non-zero means trained


def test_sft_keeps_adapter_snapshots_at_evenly_spaced_steps(sft_run, tokenizer):
    found = train.snapshots(sft_run)
    assert [step for step, _ in found] == [2, 3, 4, 5]  # 4 points of 5 steps, the last included
    final, first = lora_tensors(sft_run), lora_tensors(found[0][1])
    assert all(torch.equal(final[k], lora_tensors(found[-1][1])[k]) for k in final)  # the last step is the adapter
    assert any(not torch.equal(final[k], first[k]) for k in final)  # step 2 is an earlier state
    PeftModel.from_pretrained(llm.tiny_random_model(tokenizer), str(found[0][1]))  # loads like the final one


def test_snapshot_steps_spread_over_the_run():
    assert train.snapshot_steps(20, 4) == [5, 10, 15, 20]
    assert train.snapshot_steps(6, 4) == [2, 3, 5, 6]
    assert train.snapshot_steps(2, 4) == [1, 2]  # a run shorter than the curve: every step, never step 0


class _State:
    is_world_process_zero, max_steps = True, 4

    def __init__(self, step):
        self.global_step = step


class _Adapter:
    """Stands in for a PeftModel: records which adapters were saved where."""
    active_adapter = "default"

    def __init__(self):
        self.saved = []

    def save_pretrained(self, folder, selected_adapters):
        Path(folder).mkdir()
        (Path(folder) / "adapter_config.json").write_text("{}")
        self.saved.append((Path(folder).name, selected_adapters))


def test_a_snapshot_on_disk_is_kept_and_unfinished_ones_are_not_listed(tmp_path):
    kept = tmp_path / "snapshots" / "step-2"
    kept.mkdir(parents=True)
    (kept / "adapter_config.json").write_text('{"from": "before the resume"}')
    (tmp_path / "snapshots" / "step-1.123.partial").mkdir()  # a save killed halfway
    (tmp_path / "snapshots" / "step-3").mkdir()  # no adapter_config.json
    args, model, callback = TrainingArguments(str(tmp_path), report_to="none"), _Adapter(), train.AdapterSnapshots(4)
    for step in (1, 2, 3, 4):
        callback.on_step_end(args, _State(step), None, model=model)
    assert (kept / "adapter_config.json").read_text() == '{"from": "before the resume"}'
    assert [selected for _, selected in model.saved] == [["default"]] * 3  # steps 1, 3, 4; never TRL's "ref"
    assert [step for step, _ in train.snapshots(tmp_path)] == [1, 2, 3, 4]  # not the .partial one


def test_curve_points_below_one_fail_clearly():
    with pytest.raises(ValueError, match="curve_points"):
        train.AdapterSnapshots(0)


def test_with_adapter_merges_for_generation(sft_run, tokenizer):
    base = llm.tiny_random_model(tokenizer)
    expected = PeftModel.from_pretrained(llm.tiny_random_model(tokenizer), str(sft_run)).eval()
    merged = llm.with_adapter(base, sft_run)
    assert not isinstance(merged, PeftModel)
    ids = tokenizer("a wing", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, expected(ids).logits, atol=1e-5)
    assert merged.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3


def test_resume_false_starts_over(sft_run, tokenizer, tmp_path):
    out = tmp_path / "again"
    (out / "checkpoint-9").mkdir(parents=True)
    (out / "snapshots" / "step-9").mkdir(parents=True)
    (out / "snapshots" / "step-9" / "adapter_config.json").write_text("{}")
    (out / train.KEPT_FILE).write_text('{"step": 9}')  # a choice among the old run's snapshots
    short = get_preset(PRESET, sft_max_steps=2)
    train.train_sft(short, sft_rows(), output_dir=out, resume=False,
                    model=llm.tiny_random_model(tokenizer), tokenizer=tokenizer)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert [step for step, _ in train.snapshots(out)] == [1, 2]  # the old run's step 9 went with it
    assert train.kept_adapter(out) == out  # and so did the choice of it: the new run's end is kept


def test_a_finished_longer_run_is_not_reused_by_a_shorter_one(sft_run, tokenizer, tmp_path, capsys):
    """Half an epoch of 8 rows in batches of 2 is 2 steps; the 5-step run in the folder is another run."""
    out = tmp_path / "sft"
    shutil.copytree(sft_run, out)
    half = get_preset(PRESET, sft_max_steps=-1, sft_epochs=0.5, sft_batch_size=2)
    assert train.sft_steps(half, len(sft_rows())) == 2
    train.train_sft(half, sft_rows(), output_dir=out, model=llm.tiny_random_model(tokenizer), tokenizer=tokenizer)
    assert "planned for 5 steps, this one for 2: training again" in capsys.readouterr().out
    state = json.loads((out / "trainer_state.json").read_text())
    assert (state["global_step"], state["max_steps"]) == (2, 2)  # transformers counts the steps as sft_steps does
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert train._resume_mode(out, 2, resume=True) == "done"


# --- GRPO and resume ----------------------------------------------------------------------------

class KillAtStep(TrainerCallback):
    """Stands in for a killed process: raises in the middle of the run, after a checkpoint."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


class StepRecorder(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


@pytest.fixture(scope="module")
def grpo_run(sft_run, tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo")
    common = dict(sft_adapter=sft_run, output_dir=out, tokenizer=tokenizer, reward_funcs=[varied_reward])
    with pytest.raises(KeyboardInterrupt):
        train.train_grpo(PRESET, rl_rows(), model=llm.tiny_random_model(tokenizer),
                         callbacks=[KillAtStep(3)], **common)
    killed = sorted(p.name for p in out.glob("checkpoint-*"))
    recorder = StepRecorder()
    path = train.train_grpo(PRESET, rl_rows(), model=llm.tiny_random_model(tokenizer),
                            callbacks=[recorder], **common)
    return path, killed, recorder.steps


def test_grpo_resumes_from_the_last_checkpoint_without_losing_steps(grpo_run):
    path, killed, resumed_steps = grpo_run
    assert killed == ["checkpoint-2"]  # killed during step 3, after the step-2 checkpoint
    assert resumed_steps == [3, 4]  # picked up at step 2, no step skipped or repeated twice
    state = json.loads((path / "trainer_state.json").read_text())
    assert state["global_step"] == PRESET.grpo_max_steps
    assert train.history(path)["loss"].dropna().index.tolist() == [1, 2, 3, 4]


def test_a_finished_run_is_reused_instead_of_trained_again(grpo_run, sft_run, tokenizer):
    path = grpo_run[0]
    recorder = StepRecorder()  # transformers itself would take one extra step here
    again = train.train_grpo(PRESET, rl_rows(), sft_adapter=sft_run, output_dir=path, tokenizer=tokenizer,
                             model=llm.tiny_random_model(tokenizer), reward_funcs=[varied_reward],
                             callbacks=[recorder])
    assert again == path and recorder.steps == []
    assert json.loads((path / "trainer_state.json").read_text())["global_step"] == PRESET.grpo_max_steps
    assert train._resume_mode(path, PRESET.grpo_max_steps + 1, resume=True) == "resume"  # a longer run continues it


def _grpo_steps(tokenizer, output_dir, sft_adapter) -> list[int]:
    """The steps a one-step GRPO run in `output_dir` trains ([] when it reuses a finished run)."""
    recorder = StepRecorder()
    train.train_grpo(get_preset(PRESET, grpo_max_steps=1), rl_rows(4), sft_adapter=sft_adapter,
                     output_dir=output_dir, model=llm.tiny_random_model(tokenizer), tokenizer=tokenizer,
                     reward_funcs=[varied_reward], callbacks=[recorder])
    return recorder.steps


def test_a_cached_grpo_run_is_reused_only_from_the_adapter_it_started_from(sft_run, tokenizer, tmp_path, capsys):
    snapshot = train.snapshots(sft_run)[0][1]
    assert _grpo_steps(tokenizer, tmp_path, sft_run) == [1]
    assert _grpo_steps(tokenizer, tmp_path, sft_run) == []  # same start: reused
    assert _grpo_steps(tokenizer, tmp_path, snapshot) == [1]  # 02 kept another snapshot: trained again
    assert "training it again" in capsys.readouterr().out
    record = json.loads((tmp_path / train.START_FILE).read_text())
    assert (tmp_path / record["sft_adapter"]).resolve() == snapshot.resolve()
    assert _grpo_steps(tokenizer, tmp_path, None) == [1]  # "RL only" is a start of its own


def test_a_grpo_run_without_a_start_record_is_reused_and_a_bad_record_is_named(sft_run, tokenizer, tmp_path):
    assert _grpo_steps(tokenizer, tmp_path, sft_run) == [1]
    record = tmp_path / train.START_FILE
    record.unlink()  # a run cached by a kit that kept no record
    assert _grpo_steps(tokenizer, tmp_path, sft_run) == []
    record.write_text('{"adapter": "x"}')
    with pytest.raises(ValueError, match="started_from.json"):
        _grpo_steps(tokenizer, tmp_path, sft_run)


def test_grpo_snapshots_survive_the_kill_and_hold_only_the_policy(grpo_run):
    path = grpo_run[0]
    found = train.snapshots(path)
    assert [step for step, _ in found] == [1, 2, 3, 4]  # 1-2 from the killed run, 3-4 after the resume
    final = lora_tensors(path)
    assert all(torch.equal(final[k], lora_tensors(found[-1][1])[k]) for k in final)
    assert not any((folder / "ref").exists() for _, folder in found)  # TRL's frozen copy is not saved again


def test_grpo_trains_the_sft_adapter_against_a_frozen_sft_reference(grpo_run, sft_run):
    path, _, _ = grpo_run
    sft, grpo, ref = lora_tensors(sft_run), lora_tensors(path), lora_tensors(path / "ref")
    assert sft.keys() == grpo.keys()
    assert any(not torch.equal(sft[k], grpo[k]) for k in sft)  # the policy moved
    assert all(torch.equal(sft[k], ref[k]) for k in sft)  # the KL reference is still the SFT adapter


def test_grpo_history_has_loss_rewards_kl_and_logged_terms(grpo_run):
    log = train.history(grpo_run[0])
    for column in ("loss", "reward", "rewards/varied_reward/mean", "kl", "reward/variety", FORMAT_FAILURE,
                   "reward_std", "frac_reward_zero_std", train.GROUP_STD, train.GROUPS_ZERO_STD):
        assert log[column].notna().sum() == PRESET.grpo_max_steps, column


def staircase_reward(prompts, completions, **kwargs):
    """Completions i = 0, 1, 2, 3 earn 0, 0.5, 1, 1.5: TRL puts a prompt's 2 completions side by side,
    so each group differs by 0.5 inside and the two groups by 1 between them."""
    return [i // 2 + 0.5 * (i % 2) for i in range(len(completions))]


def test_within_group_spread_leaves_out_the_spread_between_groups(sft_run, tokenizer, tmp_path):
    path = train.train_grpo(get_preset(PRESET, grpo_max_steps=1), rl_rows(4), sft_adapter=sft_run,
                            output_dir=tmp_path, model=llm.tiny_random_model(tokenizer), tokenizer=tokenizer,
                            reward_funcs=[staircase_reward])
    step = train.history(path).loc[1]
    assert step[train.GROUP_STD] == pytest.approx(torch.tensor([0.0, 0.5]).std().item())  # Bessel, as TRL
    assert step["reward_std"] == pytest.approx(torch.tensor([0.0, 0.5, 1.0, 1.5]).std().item())  # whole batch
    assert step[train.GROUPS_ZERO_STD] == step["frac_reward_zero_std"] == 0.0


def test_grpo_uses_and_logs_the_grouprank_reward_by_default(sft_run, tokenizer, tmp_path):
    path = train.train_grpo(get_preset(PRESET, grpo_max_steps=1), rl_rows(4), sft_adapter=sft_run,
                            output_dir=tmp_path, model=llm.tiny_random_model(tokenizer), tokenizer=tokenizer)
    step = train.history(path).loc[1]
    # Six random tokens never hold <answer> tags: every completion gets the -0.5 format gate.
    assert step["rewards/grouprank_reward/mean"] == step["reward"] == step["reward/format"] == -0.5
    assert step[FORMAT_FAILURE] == 1.0
    assert step["reward/ndcg"] == step["reward/recall"] == step["reward/alignment"] == 0.0
    assert step[train.GROUP_STD] == 0.0 and step[train.GROUPS_ZERO_STD] == 1.0  # no signal for GRPO at all


# --- reward on held-out records ------------------------------------------------------------------

def target_sum_reward(prompts, completions, target_scores, **kwargs):
    """A reward known in advance: the sum of the row's targets (9, 14, 20, 11 for rl_rows(4))."""
    return [float(sum(row)) for row in target_scores]


def one_more(prompts, completions, **kwargs):
    return [1.0] * len(completions)


SAMPLING = get_preset(PRESET, batch_size=3, grpo_max_completion_length=5)  # 4 records: batches of 3 and 1


def test_heldout_reward_is_the_mean_of_the_summed_reward_functions(tokenizer):
    result = train.heldout_reward(llm.tiny_random_model(tokenizer), tokenizer, SAMPLING, rl_rows(4),
                                  seeds=(0, 1), reward_funcs=[target_sum_reward, one_more])
    assert result == {"seed 0": 14.5, "seed 1": 14.5, "mean": 14.5, "seed spread": 0.0}


def test_heldout_reward_defaults_to_the_grouprank_reward(tokenizer):
    # Random-model text holds no <answer> tags: every completion earns the -0.5 format gate.
    result = train.heldout_reward(llm.tiny_random_model(tokenizer), tokenizer, SAMPLING, rl_rows(4), seeds=(3,))
    assert result == {"seed 3": -0.5, "mean": -0.5, "seed spread": 0.0}


def test_sampled_completions_repeat_with_their_seed(tokenizer):
    model, prompts = llm.tiny_random_model(tokenizer), rl_rows(4)["prompt"]
    first = train.sample_completions(model, tokenizer, SAMPLING, prompts, seed=0)
    assert train.sample_completions(model, tokenizer, SAMPLING, prompts, seed=0) == first
    assert train.sample_completions(model, tokenizer, SAMPLING, prompts, seed=1) != first


def test_samples_follow_the_grpo_temperature_and_completion_budget(tokenizer):
    model, prompts = llm.tiny_random_model(tokenizer), rl_rows(2)["prompt"]
    cold = train.sample_completions(model, tokenizer, get_preset(SAMPLING, grpo_temperature=1e-4), prompts, seed=0)
    greedy = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(**ids, do_sample=False, max_new_tokens=5, pad_token_id=tokenizer.pad_token_id)
        greedy.append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    assert cold == greedy  # near 0 sampling picks the most likely token, as greedy decoding does, for 5 tokens


def test_reward_functions_get_completions_as_trl_passes_them(tokenizer):
    seen = []

    def recorder(prompts, completions, qid, **kwargs):
        seen.append((completions, qid))
        return [0.0] * len(completions)

    train.score_completions(SAMPLING, rl_rows(2), ["a", "b"], reward_funcs=[recorder])
    assert seen == [([[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}]], ["0", "1"])]


def test_heldout_reward_refuses_records_without_prompts(tokenizer):
    with pytest.raises(ValueError, match="prompt column"):
        train.heldout_reward(None, tokenizer, SAMPLING, rl_rows(2).remove_columns("prompt"))


# --- settings -----------------------------------------------------------------------------------

def test_trainer_settings_come_from_the_preset_and_device(tmp_path):
    preset = get_preset("cpu")
    grpo = train.grpo_config(preset, tmp_path)
    sft = train.sft_config(preset, tmp_path, with_eval=True)
    for args in (grpo, sft):
        assert (args.bf16, args.use_cpu, args.gradient_checkpointing) == (False, True, False)
        assert (args.dataloader_num_workers, args.report_to, args.seed) == (0, [], preset.seed)
        assert args.save_steps == preset.save_steps
    assert (grpo.num_generations, grpo.beta, grpo.temperature) == (
        preset.grpo_num_generations, preset.grpo_beta, preset.grpo_temperature)
    assert grpo.max_completion_length == preset.grpo_max_completion_length
    assert grpo.per_device_train_batch_size % grpo.num_generations == 0
    assert (sft.learning_rate, sft.max_length, sft.eval_strategy) == (preset.sft_lr, preset.sft_max_length, "steps")
    assert sft.eval_steps == 1 / train.SFT_EVALS


def test_grpo_options_reach_trl_and_default_to_trls_own(tmp_path):
    defaults = train.grpo_config(get_preset("smoke"), tmp_path)
    trl = GRPOConfig(str(tmp_path), use_cpu=True, bf16=False)
    for field in ("num_iterations", "loss_type", "scale_rewards", "lr_scheduler_type", "warmup_steps"):
        assert getattr(defaults, field) == getattr(trl, field), field
    preset = get_preset("smoke", grpo_num_iterations=3, grpo_loss_type="dr_grpo", grpo_scale_rewards="none",
                        grpo_lr_scheduler="constant", grpo_warmup_ratio=0.25)
    args = train.grpo_config(preset, tmp_path)
    assert (args.num_iterations, args.loss_type, args.scale_rewards) == (3, "dr_grpo", "none")
    assert (args.lr_scheduler_type, args.get_warmup_steps(20)) == ("constant", 5)  # a quarter of 20 steps


@pytest.mark.parametrize("field, value", [("grpo_loss_type", "ppo"), ("grpo_scale_rewards", "std"),
                                          ("grpo_lr_scheduler", "cosine_decay"), ("grpo_num_iterations", 0),
                                          ("grpo_warmup_ratio", 1.0)])
def test_bad_grpo_options_name_their_field(field, value, tmp_path):
    with pytest.raises(ValueError, match=field):
        train.grpo_config(get_preset("smoke", **{field: value}), tmp_path)


def test_default_folders_follow_the_preset():
    preset = get_preset("smoke", collection="bright:biology/x")
    assert runtime.dataset_dir(preset, "rl").parts[-2:] == ("smoke-bright_biology_x", "rl")
    assert runtime.adapter_dir(preset, "sft").parts[-3:] == ("adapters", "smoke", "sft")


# --- 4-bit --------------------------------------------------------------------------------------

def test_4bit_lora_gradients_survive_an_eval_forward(tokenizer, tmp_path):
    pytest.importorskip("bitsandbytes")
    preset = get_preset("smoke", quantize_4bit=True)
    trainer = train.sft_trainer(preset, sft_rows(2), output_dir=tmp_path, tokenizer=tokenizer)
    model = trainer.model
    assert model.is_loaded_in_4bit
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    model.eval()
    with torch.no_grad():
        model(**batch)  # this is what made bitsandbytes drop the gradients on CPU
    model.train()
    model(**batch).loss.backward()
    # lora_B of the first layer only gets a gradient if it flowed back through every 4-bit layer.
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_B" in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())


# --- command line and plots -----------------------------------------------------------------------

def test_cli_runs_sft_on_the_embedded_model(tmp_path, capsys):
    data = tmp_path / "sft-data"
    sft_rows(4).save_to_disk(str(data))
    path = train.main(["sft", "--preset", "smoke", "--dataset", str(data), "--output", str(tmp_path / "out"),
                       "--max-steps", "1"])
    assert (path / "adapter_model.safetensors").is_file()
    assert train.history(path).index.max() == 1
    assert "adapter saved" in capsys.readouterr().out


def test_cli_ablation_switches_a_reward_term_off_into_its_own_folder(tmp_path, monkeypatch):
    data, adapter = tmp_path / "rl-data", tmp_path / "sft"
    rl_rows(12).save_to_disk(str(data))
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    calls = []
    monkeypatch.setattr(train, "train_grpo", lambda preset, rows, sft, output, resume: calls.append(
        (preset, len(rows), sft, output)) or output)
    train.main(["grpo", "--preset", "smoke", "--dataset", str(data), "--sft-adapter", str(adapter),
                "--ablation", "no_alignment"])
    preset, rows, sft, output = calls[0]
    assert (preset.reward_alignment, preset.reward_utility) == (False, True)
    assert output == runtime.adapter_dir(preset, "grpo-no_alignment") and sft == adapter
    assert rows == len(train.load_records(data, preset)["train"])  # the notebook's rows, not all of them


def test_cli_help_explains_the_options(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = capsys.readouterr().out
    for option in ("sft", "grpo", "--preset", "--dataset", "--output", "--max-steps", "--ablation", "accelerate launch"):
        assert option in text


def test_grpo_without_an_sft_adapter_fails_clearly(tmp_path):
    with pytest.raises(SystemExit, match="no SFT adapter"):
        train.main(["grpo", "--preset", "smoke", "--dataset", str(tmp_path), "--sft-adapter", str(tmp_path)])


def test_training_curves_plot_each_series(grpo_run, sft_run):
    sft_log, grpo_log = train.history(sft_run), train.history(grpo_run[0])
    assert {line.get_label() for line in plots.plot_loss(sft_log).axes[0].lines} == {"loss", "eval_loss"}
    reward_labels = {line.get_label() for line in plots.plot_rewards(grpo_log).axes[0].lines}
    assert reward_labels == {"total", "variety", "total, rolling mean of 2 batches"}  # one function: no repeated mean
    spread = plots.plot_reward_spread(grpo_log)  # reads the names this module logs under
    assert len(spread.axes[0].lines) == 2 and len(spread.axes[1].lines[0].get_xdata()) == PRESET.grpo_max_steps
    assert (plots.GROUP_STD, plots.GROUPS_ZERO_STD) == (train.GROUP_STD, train.GROUPS_ZERO_STD)
    failures = plots.plot_format_failures(grpo_log, FORMAT_FAILURE).axes[0].lines[0]
    assert list(failures.get_xdata()) == [1, 2, 3, 4]


def test_most_trained_is_the_full_reward_model_not_an_ablation():
    found = {"zero-shot": 0, "SFT": 1, "SFT+GRPO": 2, "GRPO no utility": 3, "GRPO no alignment": 4}
    assert experiments.most_trained(found) == "SFT+GRPO"
    assert experiments.most_trained({"zero-shot": 0, "SFT": 1}) == "SFT"


# --- resume after a kill during a checkpoint save -------------------------------------------------

@pytest.fixture(scope="module")
def sft_killed_after_checkpoint_4(tokenizer, tmp_path_factory):
    """An SFT run killed during step 5, after saving checkpoints 2 and 4 (save_steps=2)."""
    out = tmp_path_factory.mktemp("sft-killed")
    with pytest.raises(KeyboardInterrupt):
        train.train_sft(PRESET, sft_rows(), output_dir=out, model=llm.tiny_random_model(tokenizer),
                        tokenizer=tokenizer, callbacks=[KillAtStep(5)])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    return out


def kill_while_writing(checkpoint, name):
    """What a kill during the save of `checkpoint` leaves: the files written before `name` (in
    the order their times show), `name` cut in half, nothing after it; name=None: the bare folder."""
    files = sorted(checkpoint.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    cut = files.index(checkpoint / name) if name else 0
    for later in files[cut + bool(name):]:
        later.unlink()
    if name:
        (checkpoint / name).write_bytes((checkpoint / name).read_bytes()[: (checkpoint / name).stat().st_size // 2])


@pytest.mark.parametrize("name", [None, "adapter_model.safetensors", "optimizer.pt", "trainer_state.json"])
def test_resume_skips_a_checkpoint_whose_save_was_killed(sft_killed_after_checkpoint_4, name, tokenizer,
                                                         tmp_path, capsys):
    # Before: "Can't find a valid checkpoint" (no weights yet), or a crash reading the missing or
    # cut trainer_state.json, on every later run, although checkpoint-2 was complete.
    out = tmp_path / "run"
    shutil.copytree(sft_killed_after_checkpoint_4, out)
    killed_log = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    kill_while_writing(out / "checkpoint-4", name)
    recorder = StepRecorder()
    train.train_sft(PRESET, sft_rows(), output_dir=out, model=llm.tiny_random_model(tokenizer),
                    tokenizer=tokenizer, callbacks=[recorder])
    assert "incomplete checkpoint-4" in capsys.readouterr().out
    assert recorder.steps == [3, 4, 5]  # continued from checkpoint-2: no step lost, none taken twice
    log = train.history(out)["loss"].dropna()
    assert log.index.tolist() == [1, 2, 3, 4, 5]
    # Steps 3 and 4 again exactly as the killed run took them: weights, optimizer and data order restored.
    assert log.loc[[3, 4]].tolist() == pytest.approx([e["loss"] for e in killed_log if e["step"] in (3, 4)])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]
    assert json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4  # saved anew


def test_resume_starts_over_when_no_checkpoint_is_complete(tmp_path, capsys):
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "adapter_config.json").write_text("{}")
    assert train._resume_point(tmp_path, resume=True) is None
    assert "incomplete checkpoint-2" in capsys.readouterr().out
    assert not (tmp_path / "checkpoint-2").exists()
