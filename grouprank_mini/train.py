"""Training the groupwise reranker: LoRA SFT, then GRPO, with TRL (docs/paper.md §4).

Notebooks 02/03 and the command line run the same two functions:

    python -m grouprank_mini.train sft  --preset cpu
    python -m grouprank_mini.train grpo --preset cpu
    accelerate launch -m grouprank_mini.train grpo --preset gpu   # several GPUs, unchanged

Choices made here, and why:

- **SFT loss on the answer only.** Synthesis writes prompt/completion records; for those TRL's
  `SFTTrainer` masks the prompt (labels -100) by itself (`completion_only_loss=None` means
  "on when the dataset has prompt and completion columns", trl/trainer/sft_trainer.py).
- **GRPO keeps training the SFT adapter** (what TRL does when it is handed a `PeftModel`):
  with beta > 0 TRL copies that adapter into a frozen "ref" adapter and computes the KL
  against it, so policy and reference both start from the SFT model, as in the paper. The
  GRPO adapter is therefore a complete adapter on the *base* model: it loads with plain
  `PeftModel.from_pretrained(base, path)` (the copy TRL keeps is saved in `path/ref/`).
  Its rank and targets are the SFT run's; the preset's LoRA fields shape a fresh adapter,
  trained when there is no SFT adapter (the paper's "RL only" ablation).
- **CPU settings come from the device**, never from notebook edits: no bf16, `use_cpu`,
  no activation (gradient) checkpointing (it only saves GPU memory and costs ~20% time),
  data loading in the main process, the preset's threads and seed.
- **4-bit (QLoRA)** when `preset.quantize_4bit`: nf4 through `llm.load`, the CPU
  gradient workaround (`llm.keep_4bit_gradients`), then PEFT's
  `prepare_model_for_kbit_training` before the adapter is attached.
- **Checkpoints every `preset.save_steps`** (the last two are kept); `resume=True` continues
  from the newest complete one (a newer one left incomplete by a kill during its save is deleted,
  with a notice), `resume=False` deletes this run's old checkpoints and starts over.
- **Adapter snapshots for learning curves.** Pruned checkpoints keep too few points for a curve,
  so both trainers also save the adapter alone (a few MB) at `preset.curve_points` evenly spaced
  steps into `<output_dir>/snapshots/step-<N>/` (`snapshots` lists them).
- **The SFT model kept is a choice, recorded.** Notebook 02 scores the snapshots on dev queries
  and writes the one it keeps into `<output_dir>/chosen.json` (`keep_snapshot`); GRPO starts from
  it and notebook 04 evaluates it (`kept_adapter`). A run trained again drops the old choice.
  A GRPO run records the adapter it started from (`started_from.json`) and is reused only
  from that same adapter: keeping another SFT snapshot trains GRPO again.
- **The within-group reward spread is logged.** GRPO learns only from reward differences among
  the completions of one prompt; TRL's `reward_std` is the std over the whole batch, so
  `SpreadLoggingGRPOTrainer` adds the mean std within groups and the share of groups without any spread.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict, load_from_disk
from peft import PeftModel, prepare_model_for_kbit_training
from transformers import PrinterCallback, SchedulerType, TrainerCallback
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import (ADAPTER_CONFIG_NAME, ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME,
                                SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME)
from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer
from trl.trainer.utils import nanstd

from . import llm, runtime
from .config import ABLATIONS, get_preset
from .rewards import make_reward_func
from .runtime import adapter_dir, dataset_dir, grpo_dir

STATE_FILE = "trainer_state.json"
# Any of these makes a checkpoint's weights for transformers (Trainer._load_from_checkpoint).
WEIGHT_FILES = (ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME, SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME,
                WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
SFT_EVALS = 5  # eval-loss points per SFT run: a curve, at a cost that does not grow with the run
EVAL_SPLITS = ("dev", "validation", "eval")  # the first one present is the SFT eval set
SNAPSHOTS = "snapshots"  # <output_dir>/snapshots/step-<N>/: the adapters behind learning curves
KEPT_FILE = "chosen.json"  # <output_dir>/chosen.json: the snapshot a later stage starts from (keep_snapshot)
START_FILE = "started_from.json"  # <grpo dir>/started_from.json: the adapter that GRPO run started from
GROUP_STD = "group_reward_std"  # logged metric: mean over groups of the std of their completions' rewards
GROUPS_ZERO_STD = "frac_groups_zero_std"  # logged metric: share of groups whose completions all earned the same


# --- settings shared by both trainers ----------------------------------------------------------

def lora_config(preset):
    """A PEFT LoRA config from the preset's rank, alpha, dropout and target modules."""
    from peft import LoraConfig

    return LoraConfig(r=preset.lora_r, lora_alpha=preset.lora_alpha, lora_dropout=preset.lora_dropout,
                      target_modules=list(preset.lora_targets), task_type="CAUSAL_LM")


def _device_args(preset, output_dir: Path) -> dict:
    """TrainingArguments that depend on the device, the preset's bookkeeping and reproducibility."""
    return dict(
        output_dir=str(output_dir),
        use_cpu=not torch.cuda.is_available(),
        **mixed_precision(llm.device_dtype()),  # TRL's default bf16=True fails on a CPU and a T4
        activation_checkpointing=checkpointing(preset),
        dataloader_num_workers=0,  # worker processes cost more than they save on 1-2 cores
        report_to="none",
        disable_tqdm=runtime.bars_hidden(),  # `make demo`'s executed notebooks: no frozen progress widget
        seed=preset.seed,
        logging_steps=1,  # every step lands in trainer_state.json for the plots
        save_strategy="steps",
        save_steps=preset.save_steps,
        save_total_limit=2,  # resuming needs only the newest; optimizer states add up on disk
    )


def mixed_precision(dtype: torch.dtype) -> dict:
    """Trainer's autocast flags for the dtype the model computes in (`llm.device_dtype`): bf16
    where the GPU has it, fp16 on one without (a T4), neither on a CPU."""
    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16}


def checkpointing(preset) -> bool:
    """Activation (gradient) checkpointing: the preset's choice, else on a GPU only; it saves
    activation memory, which a GPU lacks, for ~20% more compute, which a CPU lacks."""
    if preset.activation_checkpointing is None:
        return torch.cuda.is_available()
    return preset.activation_checkpointing


def _base_model(preset, model=None):
    """The model LoRA goes on: the preset's (4-bit if asked) unless one is passed in."""
    if model is None:
        model, _ = llm.load(preset)
    if getattr(model, "is_loaded_in_4bit", False):
        llm.keep_4bit_gradients(model)  # idempotent; also covers a 4-bit model passed in by the caller
        # Freezes the base and upcasts its non-quantized weights to fp32; checkpointing as the trainer does.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing(preset))
    return model


def _tokenizer(preset, tokenizer=None):
    return tokenizer if tokenizer is not None else llm.load_tokenizer(preset.model, preset.trust_remote_code)


def _resume_point(output_dir: Path, resume: bool) -> str | None:
    """The newest complete checkpoint to continue from; with resume=False, old checkpoints are removed.

    Newer checkpoints whose save was interrupted (`_incomplete`) are deleted, with a notice.
    Deleted rather than moved aside: such a folder holds nothing that the checkpoint before it
    and the retaken steps do not recreate; left in place, transformers would save the retaken
    step into it, over its stale files; and a deletion by every process of a multi-GPU run at
    once is harmless, where their renames would race.
    """
    if not output_dir.is_dir():
        return None
    if resume:
        while (last := get_last_checkpoint(str(output_dir))) is not None:
            problem = _incomplete(Path(last))
            if problem is None:
                return last
            print(f"skipping incomplete {Path(last).name} in {output_dir} ({problem}: its save was "
                  "interrupted); deleted, resuming from the checkpoint before it, if any")
            try:
                shutil.rmtree(last)  # not ignore_errors: a folder that stayed would be found again, forever
            except FileNotFoundError:  # another process of a multi-GPU run was faster
                pass
        return None
    for old in output_dir.glob("checkpoint-*"):
        shutil.rmtree(old, ignore_errors=True)  # every process of a multi-GPU run gets here
    shutil.rmtree(output_dir / SNAPSHOTS, ignore_errors=True)  # they belong to the run being replaced
    (output_dir / STATE_FILE).unlink(missing_ok=True)
    return None


def _incomplete(checkpoint: Path) -> str | None:
    """What `checkpoint` lacks for a resume, or None when it is complete.

    transformers' Trainer._save_checkpoint writes the weights, then optimizer.pt, scheduler.pt
    and rng_state.pth, and trainer_state.json last, so a save killed on the way leaves that
    file missing or cut short. The files a resume reads are checked too: without optimizer.pt
    or scheduler.pt transformers would resume silently with a fresh optimizer and schedule.
    """
    try:
        json.loads((checkpoint / STATE_FILE).read_text())
    except (OSError, ValueError):  # ValueError: cut-off JSON, or bytes that are no UTF-8
        return f"no readable {STATE_FILE}"
    if not any((checkpoint / name).is_file() for name in WEIGHT_FILES):
        return "no model weights"
    missing = [name for name in (OPTIMIZER_NAME, SCHEDULER_NAME) if not (checkpoint / name).is_file()]
    return f"no {' or '.join(missing)}" if missing else None


def _resume_mode(output_dir: Path, steps: int, resume: bool) -> str:
    """How to treat what `output_dir` holds, for a run planned for `steps` optimizer steps:
    "done" when its final trainer_state.json (written only after training) says it finished
    those steps: reuse it, since resuming a finished run would not be a no-op (transformers takes
    one more step before it checks max_steps); "fresh" when `resume` is off, or when that finished
    run was planned *longer* (a shorter run is another run: its learning rate decays sooner);
    else "resume" from the newest checkpoint, if any (a finished shorter run continues)."""
    path = Path(output_dir) / STATE_FILE
    if not resume:
        return "fresh"
    if not path.is_file():
        return "resume"
    state = json.loads(path.read_text())
    if state["max_steps"] == steps and state["global_step"] >= steps:
        print(f"training in {output_dir} already finished: reusing it (resume=False trains again)")
        return "done"
    if state["max_steps"] > steps:
        print(f"the run in {output_dir} was planned for {state['max_steps']} steps, this one for {steps}: training again")
        return "fresh"
    return "resume"


def sft_steps(preset, rows: int) -> int:
    """The optimizer steps of an SFT run on `rows` records, counted as transformers counts them:
    batches per epoch (the last one partial), accumulated, times the epochs, rounded up."""
    if preset.sft_max_steps > 0:
        return preset.sft_max_steps
    per_epoch = max(math.ceil(math.ceil(rows / preset.sft_batch_size) / preset.sft_grad_accum), 1)
    return math.ceil(preset.sft_epochs * per_epoch)


def snapshot_steps(max_steps: int, points: int) -> list[int]:
    """`points` evenly spaced steps of a run of `max_steps` steps, the last one included (fewer
    when the run has fewer steps than points). Rounded up, so no snapshot falls on step 0."""
    return sorted({math.ceil(k * max_steps / points) for k in range(1, points + 1)})


class AdapterSnapshots(TrainerCallback):
    """Saves the trained adapter alone at `points` evenly spaced steps into
    <output_dir>/snapshots/step-<N>/, for learning curves (checkpoints are pruned to the last two).

    A snapshot already there is kept: it was written by the same run before a resume, and the
    retaken step would only write it again. Each one is written in a temporary folder renamed
    into place (`runtime.atomic_path`), so a save killed halfway leaves nothing `snapshots` lists.
    """

    def __init__(self, points: int):
        if points < 1:
            raise ValueError(f"Preset.curve_points is {points}: a learning curve needs at least 1 snapshot")
        self.points = points

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or state.global_step not in snapshot_steps(state.max_steps, self.points):
            return
        target = Path(args.output_dir) / SNAPSHOTS / f"step-{state.global_step}"
        if (target / ADAPTER_CONFIG_NAME).is_file():
            return
        with runtime.atomic_path(target) as tmp:
            # Only the adapter being trained: GRPO's PeftModel also holds TRL's frozen "ref" copy.
            model.save_pretrained(str(tmp), selected_adapters=[model.active_adapter])


def snapshots(output_dir) -> list[tuple[int, Path]]:
    """The finished adapter snapshots of a run as (step, folder), sorted by step; [] if it has none.

    Unfinished ones (atomic_path's `step-<N>.<pid>.partial` folders) and folders without
    adapter_config.json are left out. Each folder loads like the final adapter:
    `llm.load(preset, adapter=folder)`.
    """
    found = []
    for folder in (Path(output_dir) / SNAPSHOTS).glob("step-*"):
        match = re.fullmatch(r"step-(\d+)", folder.name)
        if match and (folder / ADAPTER_CONFIG_NAME).is_file():
            found.append((int(match.group(1)), folder))
    return sorted(found)


def keep_snapshot(output_dir, step: int, why: str) -> Path:
    """Record that the snapshot of `step` is the model to keep from the run in `output_dir`
    (`why`: how it was chosen, kept beside it); returns its folder. The end of training is the
    run's own final adapter, so keeping it changes nothing downstream."""
    output_dir = Path(output_dir)
    folder = dict(snapshots(output_dir)).get(step)
    if folder is None:
        raise ValueError(f"{output_dir} has no snapshot of step {step}; it has steps {[s for s, _ in snapshots(output_dir)]}")
    with runtime.atomic_path(output_dir / KEPT_FILE) as tmp:
        tmp.write_text(json.dumps({"step": step, "why": why}))
    return kept_adapter(output_dir)


def kept_adapter(output_dir) -> Path:
    """The adapter a later stage starts from: the snapshot `keep_snapshot` recorded, else (nothing
    recorded, or the end of training chosen) the run's final adapter in `output_dir` itself."""
    output_dir = Path(output_dir)
    record = output_dir / KEPT_FILE
    if not record.is_file():
        return output_dir
    try:
        step = int(json.loads(record.read_text())["step"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{record}: expected {{\"step\": <int>, ...}}, got {record.read_text()[:80]!r}") from err
    folder = dict(snapshots(output_dir)).get(step)
    if folder is None:
        raise FileNotFoundError(f"{record} keeps step {step}, but {output_dir / SNAPSHOTS} has no such snapshot")
    return output_dir if (output_dir / STATE_FILE).is_file() and final_step(output_dir) == step else folder


def final_step(output_dir) -> int:
    """The step at which a finished training run saved its adapter (Trainer's trainer_state.json)."""
    state = Path(output_dir) / STATE_FILE
    if not state.is_file():
        raise FileNotFoundError(f"{state} is missing: no way to tell at which step {output_dir} was saved")
    step = json.loads(state.read_text()).get("global_step")
    if step is None:
        raise ValueError(f"{state} has no 'global_step' field")
    return int(step)


def _with_snapshots(preset, callbacks) -> list:
    """The caller's callbacks, then the snapshots: a callback that stops the run at a step
    (a test's stand-in for a kill) then stops it before that step's snapshot, like a real kill."""
    return [*(callbacks or []), AdapterSnapshots(preset.curve_points)]


def _train_and_save(trainer, output_dir: Path, resume: bool) -> Path:
    trainer.train(resume_from_checkpoint=_resume_point(output_dir, resume))
    trainer.save_model(str(output_dir))  # adapter + tokenizer, on the main process only
    trainer.save_state()  # trainer_state.json next to the adapter, read by history()
    return output_dir


# --- SFT ----------------------------------------------------------------------------------------

def sft_config(preset, output_dir: Path, with_eval: bool = False) -> SFTConfig:
    return SFTConfig(
        **_device_args(preset, output_dir),
        num_train_epochs=preset.sft_epochs,
        max_steps=preset.sft_max_steps,  # -1: run the epochs
        learning_rate=preset.sft_lr,
        per_device_train_batch_size=preset.sft_batch_size,
        per_device_eval_batch_size=preset.sft_batch_size,
        gradient_accumulation_steps=preset.sft_grad_accum,
        max_length=preset.sft_max_length,
        eval_strategy="steps" if with_eval else "no",
        eval_steps=1 / SFT_EVALS,  # a float below 1 is a fraction of the run's steps
    )


def _quiet(trainer):
    """Without progress bars (`runtime.bars_hidden`) a Trainer prints every log dict instead
    (PrinterCallback); the notebooks plot those logs, so the printout goes too."""
    if trainer.args.disable_tqdm:
        trainer.remove_callback(PrinterCallback)
    return trainer


def sft_trainer(preset, train_ds, eval_ds=None, output_dir=None, model=None, tokenizer=None,
                callbacks=None) -> SFTTrainer:
    """A ready SFTTrainer (LoRA from the preset); `train_sft` runs it. Handy to inspect batches."""
    output_dir = Path(output_dir or adapter_dir(preset, "sft"))
    return _quiet(SFTTrainer(
        model=_base_model(preset, model),
        args=sft_config(preset, output_dir, with_eval=eval_ds is not None),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=_tokenizer(preset, tokenizer),
        peft_config=lora_config(preset),
        callbacks=_with_snapshots(preset, callbacks),
    ))


def train_sft(preset, train_ds, eval_ds=None, output_dir=None, resume=True, model=None, tokenizer=None,
              callbacks=None) -> Path:
    """LoRA SFT on prompt/completion records; returns the folder of the saved adapter."""
    runtime.setup(preset)
    output_dir = Path(output_dir or adapter_dir(preset, "sft"))
    mode = _resume_mode(output_dir, sft_steps(preset, len(train_ds)), resume)
    if mode == "done":
        return output_dir
    (output_dir / KEPT_FILE).unlink(missing_ok=True)  # a choice among the old snapshots is void now
    trainer = sft_trainer(preset, train_ds, eval_ds, output_dir, model, tokenizer, callbacks)
    return _train_and_save(trainer, output_dir, mode == "resume")


# --- GRPO ---------------------------------------------------------------------------------------

# TRL 1.16 checks these only once training has begun, after loading the model and generating.
GRPO_CHOICES = {"grpo_loss_type": ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"),
                "grpo_scale_rewards": ("group", "batch", "none"),
                "grpo_lr_scheduler": tuple(kind.value for kind in SchedulerType)}


def check_grpo_fields(preset) -> None:
    """A ValueError naming the Preset field when a GRPO option has a value TRL would refuse late."""
    for name, choices in GRPO_CHOICES.items():
        if getattr(preset, name) not in choices:
            raise ValueError(f"Preset.{name} is {getattr(preset, name)!r}; choose one of {', '.join(choices)}")
    if preset.grpo_num_iterations < 1:
        raise ValueError(f"Preset.grpo_num_iterations is {preset.grpo_num_iterations}: at least 1 pass per batch")
    if not 0 <= preset.grpo_warmup_ratio < 1:  # transformers reads a warmup_steps of 1 or more as a step count
        raise ValueError(f"Preset.grpo_warmup_ratio is {preset.grpo_warmup_ratio}: a share of the steps, in [0, 1)")


def grpo_config(preset, output_dir: Path) -> GRPOConfig:
    check_grpo_fields(preset)
    return GRPOConfig(
        **_device_args(preset, output_dir),
        max_steps=preset.grpo_max_steps,
        learning_rate=preset.grpo_lr,
        per_device_train_batch_size=preset.grpo_batch_size,  # counts completions
        gradient_accumulation_steps=preset.grpo_grad_accum,  # TRL generates for all micro-steps at once
        per_device_eval_batch_size=preset.grpo_batch_size * preset.grpo_grad_accum,  # must divide by num_generations
        use_vllm=preset.grpo_vllm,  # colocate mode (TRL's default): vLLM shares this process's GPU
        num_generations=preset.grpo_num_generations,
        temperature=preset.grpo_temperature,
        beta=preset.grpo_beta,  # KL to the frozen SFT adapter ("ref"); 0 skips the reference pass
        max_completion_length=preset.grpo_max_completion_length,
        disable_dropout=True,  # policy and reference log-probs must not differ by dropout noise
        num_iterations=preset.grpo_num_iterations,  # >1: each batch of completions serves that many steps
        loss_type=preset.grpo_loss_type,
        scale_rewards=preset.grpo_scale_rewards,
        lr_scheduler_type=preset.grpo_lr_scheduler,
        warmup_steps=preset.grpo_warmup_ratio,  # below 1 transformers reads it as a share of the steps
    )


class SpreadLoggingGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer, also logging the reward spread *within* groups (`GROUP_STD`, `GROUPS_ZERO_STD`).

    The advantage (r - group mean) / group std is all GRPO learns from: a group whose completions
    all earn the same carries no signal. TRL 1.16 logs `reward_std` over the whole batch, which
    mixes the spread between prompts (useless to GRPO) into it, and `frac_reward_zero_std` from the
    std `scale_rewards` divides by (the batch's under "batch"). Computed here from the rewards of
    every process, grouped as TRL groups them, with TRL's Bessel-corrected std.
    """

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        mode = "train" if self.model.training else "eval"
        size = self.num_generations if mode == "train" else self.num_generations_eval
        total = (per_func * self.reward_weights.to(per_func.device)).nansum(dim=1)
        total[torch.isnan(per_func).all(dim=1)] = torch.nan  # unscorable, as TRL leaves them out
        spread = nanstd(total.view(-1, size), dim=1)
        self._metrics[mode][GROUP_STD].append(torch.nanmean(spread).item())
        flat = torch.isclose(spread, torch.zeros_like(spread))  # TRL's test for a zero std
        self._metrics[mode][GROUPS_ZERO_STD].append(flat.float().mean().item())
        return per_func


def _grpo_model(preset, sft_adapter, model):
    """(model, peft_config): the SFT adapter to keep training, or a fresh LoRA when there is none."""
    base = _base_model(preset, model)
    if sft_adapter is None:
        return base, lora_config(preset)
    return PeftModel.from_pretrained(base, str(sft_adapter), is_trainable=True), None


def grpo_trainer(preset, rl_ds, sft_adapter=None, output_dir=None, model=None, tokenizer=None,
                 reward_funcs=None, callbacks=None) -> GRPOTrainer:
    """A ready GRPOTrainer; `train_grpo` runs it. `reward_funcs` defaults to the GroupRank reward."""
    if reward_funcs is None:
        reward_funcs = [make_reward_func(preset)]
    output_dir = Path(output_dir or grpo_dir(preset))
    policy, peft_config = _grpo_model(preset, sft_adapter, model)
    return _quiet(SpreadLoggingGRPOTrainer(
        model=policy,
        reward_funcs=reward_funcs,
        args=grpo_config(preset, output_dir),
        train_dataset=rl_ds,
        processing_class=_tokenizer(preset, tokenizer),
        peft_config=peft_config,
        callbacks=_with_snapshots(preset, callbacks),
    ))


def train_grpo(preset, rl_ds, sft_adapter=None, output_dir=None, resume=True, model=None, tokenizer=None,
               reward_funcs=None, callbacks=None) -> Path:
    """GRPO from the SFT adapter (or a fresh LoRA if None); returns the folder of the saved adapter."""
    runtime.setup(preset)
    output_dir = Path(output_dir or grpo_dir(preset))
    start = _start_name(output_dir, sft_adapter)
    old = _started_from(output_dir)
    if resume and old is not None and old["sft_adapter"] != start:
        print(f"GRPO in {output_dir} started from {old['sft_adapter']}, not from {start}: training it again")
        resume = False
    mode = _resume_mode(output_dir, preset.grpo_max_steps, resume)
    if mode == "done":
        return output_dir
    trainer = grpo_trainer(preset, rl_ds, sft_adapter, output_dir, model, tokenizer, reward_funcs, callbacks)
    output_dir.mkdir(parents=True, exist_ok=True)  # the record outlives a kill, so a resume checks it too
    with runtime.atomic_path(output_dir / START_FILE) as tmp:
        tmp.write_text(json.dumps({"sft_adapter": start}))
    return _train_and_save(trainer, output_dir, mode == "resume")


def _start_name(output_dir: Path, sft_adapter) -> str | None:
    """The SFT adapter as a path relative to the GRPO folder, so a moved cache still matches."""
    return None if sft_adapter is None else os.path.relpath(Path(sft_adapter).resolve(), output_dir.resolve())


def _started_from(output_dir: Path) -> dict | None:
    """The record of the adapter a cached GRPO run started from (None: no record, e.g. a run of an older kit).
    A cached run is reused only if it started from the adapter asked for now: when notebook 02
    keeps another SFT snapshot, an old GRPO run would otherwise pass for one trained from it."""
    record = output_dir / START_FILE
    if not record.is_file():
        return None
    try:
        found = json.loads(record.read_text())
        return {"sft_adapter": found["sft_adapter"]}
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{record}: expected {{\"sft_adapter\": <path or null>}}, got {record.read_text()[:80]!r}") from err


# --- using the results --------------------------------------------------------------------------

def history(output_dir):
    """Every logged value of a run as a DataFrame indexed by step (one column per metric).

    Reads the newest trainer_state.json: the run's own when it finished, else its last
    checkpoint's, so an interrupted run can be plotted too. GRPO columns include `loss`,
    `reward`, `rewards/<func>/mean`, `kl`, TRL's `reward_std` (over the whole batch) and
    `frac_reward_zero_std`, the within-group spread (`GROUP_STD`, `GROUPS_ZERO_STD`) and whatever
    the reward logged with `log_metric`. With `grpo_num_iterations` > 1 the reward columns are
    empty on the steps that reuse a batch of completions (nothing was sampled there).
    """
    import pandas as pd

    output_dir = Path(output_dir)
    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    candidates = [p for p in (output_dir / STATE_FILE, Path(last or output_dir) / STATE_FILE) if p.is_file()]
    if not candidates:
        raise FileNotFoundError(f"no {STATE_FILE} in {output_dir} or its checkpoints")
    state = json.loads(max(candidates, key=lambda p: p.stat().st_mtime).read_text())
    # Train and eval logs of one step are separate entries: merge them into one row per step.
    return pd.DataFrame(state["log_history"]).groupby("step").first()


# --- reward on held-out records, sampled as GRPO samples -------------------------------------------

# GRPOConfig's sampling defaults besides the temperature (no top-p or top-k cut, no repetition
# penalty), read from TRL itself: held-out completions are drawn the way training draws them.
TRL_SAMPLING = {name: GRPOConfig.__dataclass_fields__[name].default
                for name in ("top_p", "top_k", "repetition_penalty")}


@torch.inference_mode()
def sample_completions(model, tokenizer, preset, prompts, seed: int) -> list[str]:
    """One sampled completion per chat prompt, in order: the preset's GRPO temperature and
    grpo_max_completion_length, `preset.batch_size` prompts at a time. The same seed (and batch
    size) gives the same completions; the caller's random state is left as it was."""
    texts = [tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) for p in prompts]
    size = preset.batch_size
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return [text for start in range(0, len(texts), size)
                for text in _sample_batch(model, tokenizer, preset, texts[start:start + size])]


def _sample_batch(model, tokenizer, preset, texts: list[str]) -> list[str]:
    batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left",  # decoder-only: pad left
                      add_special_tokens=False).to(model.device)  # the chat template holds the special tokens
    out = model.generate(**batch, do_sample=True, temperature=preset.grpo_temperature,
                         max_new_tokens=preset.grpo_max_completion_length, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, **TRL_SAMPLING)
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def score_completions(preset, records, completions: list[str], reward_funcs=None) -> list[float]:
    """The reward of completions[i] for row i of `records` (a Dataset of RL records), summed over
    `reward_funcs` as GRPOTrainer sums them (weights 1; default: the GroupRank reward). Each function
    gets the columns and, for chat prompts, the completions as assistant messages, as TRL passes them."""
    if len(completions) != len(records):
        raise ValueError(f"{len(completions)} completions for {len(records)} records: one each")
    funcs = reward_funcs or [make_reward_func(preset)]
    prompts = list(records["prompt"])
    if isinstance(prompts[0], list):  # chat prompts
        completions = [[{"role": "assistant", "content": text}] for text in completions]
    columns = {name: list(records[name]) for name in records.column_names if name != "prompt"}
    per_func = [func(prompts=prompts, completions=completions, **columns) for func in funcs]
    return [float(sum(values)) for values in zip(*per_func)]


def heldout_reward(model, tokenizer, preset, records, seeds=(0, 1), reward_funcs=None) -> dict:
    """Mean reward of one sampled completion per held-out RL record, for each seed and overall.

    Returns {"seed <s>": mean for that seed, ..., "mean": over all seeds, "seed spread": the largest
    minus the smallest seed mean}. Compare two models on the same records and seeds: a difference
    larger than the seed spread is more than sampling noise.
    """
    if len(records) == 0 or "prompt" not in records.column_names:
        raise ValueError(f"heldout_reward needs RL records with a prompt column, got {len(records)} rows "
                         f"with columns {records.column_names}")
    if not seeds:
        raise ValueError("heldout_reward needs at least one seed")
    means = {}
    for seed in seeds:
        completions = sample_completions(model, tokenizer, preset, records["prompt"], seed)
        rewards = score_completions(preset, records, completions, reward_funcs)
        means[f"seed {seed}"] = sum(rewards) / len(rewards)
    values = list(means.values())
    return {**means, "mean": sum(values) / len(values), "seed spread": max(values) - min(values)}


# --- command line -------------------------------------------------------------------------------

def _load_dataset(path: Path, preset) -> tuple[Dataset, Dataset]:
    """(train, eval) from a DatasetDict with "train" and a dev split, or from a plain saved
    Dataset split by `load_records`, exactly as the notebooks split it."""
    data = load_from_disk(str(path))
    if isinstance(data, DatasetDict):
        eval_split = next((name for name in EVAL_SPLITS if name in data), None)
        return data["train"], data[eval_split] if eval_split else None
    split = load_records(path, preset)
    return split["train"], split["test"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m grouprank_mini.train",
        description="LoRA SFT or GRPO of the groupwise reranker with a preset's settings. The same functions "
                    "the notebooks call; runs unchanged under `accelerate launch -m grouprank_mini.train ...`.")
    parser.add_argument("stage", choices=["sft", "grpo"], help="sft: supervised LoRA on the synthesised answers; "
                        "grpo: reinforcement learning with the GroupRank reward, starting from the SFT adapter")
    parser.add_argument("--preset", default="smoke", help="preset name from grouprank_mini.config (default: smoke)")
    parser.add_argument("--dataset", type=Path, help="a dataset saved by synthesis (save_to_disk); default: "
                        "<cache>/datasets/<preset>-<collection>/sft (or /rl for grpo)")
    parser.add_argument("--output", type=Path, help="where checkpoints and the final adapter go; default: "
                        "<cache>/adapters/<preset>/<stage>")
    parser.add_argument("--sft-adapter", help="grpo only: the SFT adapter to start from; default: the preset's "
                        "SFT output; 'none' trains a fresh LoRA (RL only)")
    parser.add_argument("--ablation", choices=sorted(ABLATIONS), help="grpo only: train with one reward term "
                        "switched off, into <cache>/adapters/<preset>/grpo-<ablation> (the paper's ablation)")
    parser.add_argument("--max-steps", type=int, help="override the preset's sft_max_steps / grpo_max_steps")
    parser.add_argument("--threads", type=int, help="override the preset's torch threads (e.g. 1 per run when "
                        "two runs share a 2-core machine)")
    parser.add_argument("--no-resume", action="store_true", help="delete old checkpoints in the output folder "
                        "and start over (default: continue from the newest checkpoint)")
    return parser


def _sft_adapter(args, preset) -> Path | None:
    if args.sft_adapter == "none":
        return None
    path = Path(args.sft_adapter) if args.sft_adapter else kept_adapter(adapter_dir(preset, "sft"))
    if not (path / "adapter_config.json").is_file():
        raise SystemExit(f"no SFT adapter at {path}: run the sft stage first, or pass --sft-adapter none")
    return path


def main(argv=None) -> Path:
    args = _parser().parse_args(argv)
    steps_field = "sft_max_steps" if args.stage == "sft" else "grpo_max_steps"
    overrides = {steps_field: args.max_steps, "threads": args.threads}
    preset = get_preset(args.preset, **{k: v for k, v in overrides.items() if v is not None})
    if args.stage == "sft":
        train_ds, eval_ds = _load_dataset(args.dataset or dataset_dir(preset, "sft"), preset)
        path = train_sft(preset, train_ds, eval_ds, args.output, resume=not args.no_resume)
    else:
        sft_adapter = _sft_adapter(args, preset)  # checked first: fail before loading anything
        rl_ds, _ = _load_dataset(args.dataset or dataset_dir(preset, "rl"), preset)
        output = args.output or grpo_dir(preset, args.ablation)
        preset = replace(preset, **ABLATIONS.get(args.ablation, {}))
        path = train_grpo(preset, rl_ds, sft_adapter, output, resume=not args.no_resume)
    print(f"adapter saved to {path}")
    return path


# --- notebooks' helpers ---------------------------------------------------------------------------

def load_records(path, preset, eval_fraction: float = 0.1):
    """A saved synthesis dataset split into "train" and "test" (held-out rows for eval loss)."""
    rows = load_from_disk(str(path))
    if len(rows) < 10:  # too few rows to hold any out: evaluate on the training rows themselves
        return DatasetDict(train=rows, test=rows)
    return rows.train_test_split(test_size=eval_fraction, seed=preset.seed)


def supervised_tokens(trainer, index: int = 0) -> dict:
    """How many prompt tokens of a training row are masked, how many carry a label, and their text."""
    row = trainer.train_dataset[index]
    trained = [t for t, label in zip(row["input_ids"], row["labels"]) if label != -100]
    return {"prompt_tokens": len(row["input_ids"]) - len(trained), "trained_tokens": len(trained),
            "trained": trainer.processing_class.decode(trained)}


# A score digit follows `": ` in the answer (`{"[3]": 10, ...}`), or another digit of the same score.
_BEFORE_SCORE_DIGIT = re.compile(r'":\s*\d*$')


def loss_by_token_kind(trainer, model, rows: int = 8) -> dict[str, float]:
    """Mean loss (nats per token) of `model` on the answers of the first `rows` training rows, split
    into the score digits (the judgement) and the rest (the answer's form: tags, brackets, slot numbers,
    end of turn). The logged training loss mixes the two; this shows which part is left to learn."""
    tokenizer, losses = trainer.processing_class, {"form": [], "score digits": []}
    model.eval()
    for i in range(min(rows, len(trainer.train_dataset))):
        batch = trainer.data_collator([trainer.train_dataset[i]])
        ids, labels = batch["input_ids"][0], batch["labels"][0]
        with torch.no_grad():
            logits = model(input_ids=ids[None].to(model.device)).logits[0, :-1].float().cpu()
        nll = torch.nn.functional.cross_entropy(logits, labels[1:], ignore_index=-100, reduction="none")
        answer = (labels != -100).nonzero().flatten().tolist()
        for k in answer:
            before = tokenizer.decode(ids[answer[0]:k])
            digit = tokenizer.decode(ids[k:k + 1]).strip().isdigit() and _BEFORE_SCORE_DIGIT.search(before)
            losses["score digits" if digit else "form"].append(nll[k - 1].item())
    n = sum(map(len, losses.values()))
    return {**{kind: sum(v) / len(v) if v else float("nan") for kind, v in losses.items()},
            "share of score digits": len(losses["score digits"]) / n}


def run_ablations(preset, rl_ds, sft_adapter) -> dict[str, Path]:
    """GRPO once more per reward term switched off (the paper's ablation); adapters by name."""
    return {name: train_grpo(replace(preset, **switch), rl_ds, sft_adapter, output_dir=grpo_dir(preset, name))
            for name, switch in ABLATIONS.items()}


if __name__ == "__main__":
    main()
