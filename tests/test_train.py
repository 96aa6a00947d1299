"""LoRA SFT, GRPO, resume, 4-bit gradients and the CLI (grouprank_mini.train).

Most tests train a 2-layer random Llama with the real SmolLM2 tokenizer (seconds per run);
only the 4-bit gradient check and the CLI smoke run load the embedded SmolLM2.
"""
import json
import shutil

import pytest
import torch
from datasets import Dataset
from peft import PeftModel
from safetensors.torch import load_file
from transformers import TrainerCallback

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


def test_sft_trains_evaluates_checkpoints_and_saves_a_plain_peft_adapter(sft_run, tokenizer):
    log = train.history(sft_run)
    assert log["loss"].dropna().index.tolist() == [1, 2, 3, 4, 5]
    assert log["eval_loss"].dropna().index.tolist() == [1, 2, 3, 4, 5]  # train.SFT_EVALS points per run
    assert sorted(p.name for p in sft_run.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]  # last two
    assert (sft_run / "tokenizer_config.json").is_file()
    tuned = PeftModel.from_pretrained(llm.tiny_random_model(tokenizer), str(sft_run))
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: non-zero means trained


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
    short = get_preset(PRESET, sft_max_steps=2)
    train.train_sft(short, sft_rows(), output_dir=out, resume=False,
                    model=llm.tiny_random_model(tokenizer), tokenizer=tokenizer)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]


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
    longer = get_preset(PRESET, grpo_max_steps=PRESET.grpo_max_steps + 1)
    assert not train._finished(path, longer.grpo_max_steps, epochs=1)  # a longer run resumes and continues


def test_grpo_trains_the_sft_adapter_against_a_frozen_sft_reference(grpo_run, sft_run):
    path, _, _ = grpo_run
    sft, grpo, ref = lora_tensors(sft_run), lora_tensors(path), lora_tensors(path / "ref")
    assert sft.keys() == grpo.keys()
    assert any(not torch.equal(sft[k], grpo[k]) for k in sft)  # the policy moved
    assert all(torch.equal(sft[k], ref[k]) for k in sft)  # the KL reference is still the SFT adapter


def test_grpo_history_has_loss_rewards_kl_and_logged_terms(grpo_run):
    log = train.history(grpo_run[0])
    for column in ("loss", "reward", "rewards/varied_reward/mean", "kl", "reward/variety", FORMAT_FAILURE):
        assert log[column].notna().sum() == PRESET.grpo_max_steps, column


def test_grpo_uses_and_logs_the_grouprank_reward_by_default(sft_run, tokenizer, tmp_path):
    path = train.train_grpo(get_preset(PRESET, grpo_max_steps=1), rl_rows(4), sft_adapter=sft_run,
                            output_dir=tmp_path, model=llm.tiny_random_model(tokenizer), tokenizer=tokenizer)
    step = train.history(path).loc[1]
    # Six random tokens never hold <answer> tags: every completion gets the -0.5 format gate.
    assert step["rewards/grouprank_reward/mean"] == step["reward"] == step["reward/format"] == -0.5
    assert step[FORMAT_FAILURE] == 1.0
    assert step["reward/ndcg"] == step["reward/recall"] == step["reward/alignment"] == 0.0


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
    assert reward_labels == {"total", "variety"}  # one function: its mean would repeat the total
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
