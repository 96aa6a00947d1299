"""The single-GPU path without a GPU: each gpu-only branch on its own, then the `gpu` preset's
whole chain on a CPU (`grouprank_mini.dryrun`, what `make dryrun PRESET=gpu` runs).

Branch by branch (the full dry run takes all of these that can run on a CPU):
- 4-bit load + prepare_model_for_kbit_training + LoRA gradients: test_4bit_qwen2_trains_with_checkpointing
- gradient checkpointing: the same, and test_checkpointing_is_the_presets_or_the_devices
- bf16/fp16 by device capability: test_compute_dtype_by_capability, test_trainer_precision_flags
- device_map per process under accelerate: test_device_map_puts_each_process_on_its_gpu
- reasoning prompts, budgets and parsing: test_reasoning_budget_and_parsing
- long documents cut at doc_max_chars: test_long_documents_are_cut_at_the_cap
- excluded ids removed before evaluation: test_excluded_ids_are_removed_before_evaluation
- vLLM generation switch: test_vllm_switch_reaches_trl (configuration only: vLLM needs a GPU)
- several GPUs: test_accelerate_config_is_multi_gpu
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from grouprank_mini import data, dryrun, evaluate, llm, prompts, train
from grouprank_mini.config import get_preset
from grouprank_mini.endpoint import EndpointBackend
from grouprank_mini.parsing import parse_group_scores, parse_permutation
from grouprank_mini.rerank import GroupwiseReranker
from grouprank_mini.runtime import PROJECT_ROOT

GPU = get_preset("gpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return llm.save_tiny_qwen2(tmp_path_factory.mktemp("dryrun") / "tiny-qwen2", llm.load_tokenizer())


# --- precision and placement ---------------------------------------------------------------------

def test_compute_dtype_by_capability():
    assert llm.compute_dtype(cuda=False, bf16=False) is torch.float32
    assert llm.compute_dtype(cuda=False, bf16=True) is torch.float32  # a flag without a GPU means nothing
    assert llm.compute_dtype(cuda=True, bf16=True) is torch.bfloat16  # Ampere and newer
    assert llm.compute_dtype(cuda=True, bf16=False) is torch.float16  # a T4


def test_trainer_precision_flags():
    assert train.mixed_precision(torch.float32) == {"bf16": False, "fp16": False}
    assert train.mixed_precision(torch.bfloat16) == {"bf16": True, "fp16": False}
    assert train.mixed_precision(llm.compute_dtype(cuda=True, bf16=False)) == {"bf16": False, "fp16": True}
    config = train.sft_config(GPU, Path("unused"))  # this machine: a CPU
    assert (config.bf16, config.fp16, config.use_cpu) == (False, False, True)
    assert llm.bnb_config().bnb_4bit_compute_dtype is torch.float32


def test_device_map_puts_each_process_on_its_gpu():
    assert llm.device_map(cuda=False) is None
    assert llm.device_map(cuda=True, state=SimpleNamespace(local_process_index=3)) == {"": 3}
    assert llm.device_map(cuda=True) == {"": 0}  # accelerate's own state: a single process here


def test_checkpointing_is_the_presets_or_the_devices(tmp_path):
    assert train.checkpointing(GPU) is torch.cuda.is_available()
    forced = get_preset("gpu", activation_checkpointing=True)
    assert train.sft_config(forced, tmp_path).activation_checkpointing
    assert train.grpo_config(forced, tmp_path).activation_checkpointing
    assert not train.checkpointing(get_preset("gpu", activation_checkpointing=False))


def test_4bit_qwen2_trains_with_checkpointing(tiny):
    """llm.load in 4 bits, PEFT's kbit preparation with checkpointing (as _base_model does), LoRA
    on top: the loss backpropagates into every LoRA matrix through the nf4 weights."""
    from peft import get_peft_model

    preset = get_preset("gpu", model=str(tiny), activation_checkpointing=True)
    model = train._base_model(preset)
    assert model.is_loaded_in_4bit and model.is_gradient_checkpointing
    model = get_peft_model(model, train.lora_config(preset)).train()
    ids = torch.randint(3, 1000, (1, 32))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for name, p in model.named_parameters() if "lora_B" in name]
    assert len(grads) == 7 * model.config.num_hidden_layers and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_tiny_model_is_qwen2_with_qwens_chat_format(tiny):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny)
    assert config.model_type == "qwen2" and config.num_key_value_heads < config.num_attention_heads
    assert config.tie_word_embeddings and config.max_position_embeddings == 32768
    tokenizer = llm.load_tokenizer(str(tiny))
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.eos_token == "<|im_end|>"


def test_dry_run_tokenizer_is_qwens_kind():
    tokenizer = dryrun.tiny_tokenizer(dryrun.bright_tables())
    assert len(tokenizer) <= 1024
    text = "<|im_start|>user\n[12]: 10 moths<|im_end|>\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert [ids[0], ids[-2]] == tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert all(tokenizer.tokenize(d) == [d] for d in "0123456789")  # slot_scores reads one token per digit


# --- what the gpu preset asks of the prompts and the data ------------------------------------------------

def test_reasoning_budget_and_parsing():
    groupwise = GroupwiseReranker(None, GPU)
    assert groupwise._budget(20) == GPU.max_new_tokens  # reasoning: the whole budget
    assert GroupwiseReranker(None, get_preset("gpu", reasoning=False))._budget(20) == 8 * 20 + 12
    assert "<reason>" in prompts.groupwise_messages("q", ["a", "b"], GPU.doc_max_chars, reasoning=True)[-1]["content"]
    answer = '<answer>{"[1]": 7, "[2]": 2}</answer>'
    assert parse_group_scores(f"<reason>1 beats 2</reason>\n{answer}", 2, require_reason=True).status == "ok"
    assert parse_group_scores(answer, 2, require_reason=True).status == "tags_missing"


@pytest.mark.parametrize("cap", [GPU.doc_max_chars, 3000])
def test_long_documents_are_cut_at_the_cap(cap):
    long = "word " * 2000  # 10000 characters
    cut = prompts.truncate(long, cap)
    assert len(cut) <= cap + 4 and cut.endswith(" ...")
    line = prompts.numbered_documents([long, "short"], cap).splitlines()[0]
    assert line == f"[1]. {cut}"


@pytest.fixture(scope="module")
def bright(tmp_path_factory):
    return dryrun.write_bright(tmp_path_factory.mktemp("bright") / "BRIGHT")


def test_fixture_has_what_bright_has(bright):
    tables = dryrun.bright_tables()
    examples, docs = tables[("examples", dryrun.DOMAIN)], tables[("documents", dryrun.DOMAIN)]
    assert any(e["excluded_ids"] == ["N/A"] for e in examples) and any(e["excluded_ids"] != ["N/A"] for e in examples)
    assert not any(set(e["gold_ids"]) & set(e["excluded_ids"]) for e in examples)  # the copy the chain runs on
    variant = dryrun.bright_tables(gold_excluded=True)[("examples", dryrun.DOMAIN)]
    assert [shared for e in variant if (shared := set(e["gold_ids"]) & set(e["excluded_ids"]))] == [{dryrun.EXCLUDED_GOLD}]
    assert sum(len(d["content"]) > GPU.doc_max_chars for d in docs) >= len(dryrun.TOPICS)


def test_excluded_ids_are_removed_before_evaluation(bright):
    collection = data.load_collection(f"bright:{dryrun.DOMAIN}@{bright}")
    qid, excluded = next(iter(collection.excluded.items()))
    relevant = sorted(collection.qrels[qid])
    run = {qid: {d: float(-rank) for rank, d in enumerate(sorted(excluded) + relevant)}}
    filtered = evaluate.remove_excluded(run, collection)
    assert set(filtered[qid]) == set(relevant)
    # Ranked first, the excluded documents would push the relevant ones down; removed, they cannot.
    assert evaluate.evaluate(run, collection, [qid])["nDCG@10"] == pytest.approx(1.0)


def test_an_excluded_gold_id_is_answered(tmp_path):
    assert dryrun.check_gold_excluded(tmp_path / "BRIGHT") in ("refused by the loader", "loaded, the gold id excluded")


# --- the teachers' server -------------------------------------------------------------------------------

def test_scripted_teacher_serves_the_endpoint_backend():
    query, docs = "why are moths drawn to light", ["moths fly to light at night", "roots sense gravity"]
    with dryrun.ScriptedTeacher() as teacher:
        assert teacher.url.startswith("http://127.0.0.1:")
        backend = EndpointBackend(teacher.url, "Qwen/Qwen2.5-7B-Instruct", max_retries=0)
        scored, ordered = backend.generate([prompts.groupwise_messages(query, docs, 1500),
                                            prompts.listwise_messages(query, docs[::-1], 1500)])
    parsed = parse_group_scores(scored, 2)
    assert parsed.ok and parsed.scores[0] > parsed.scores[1]
    assert parse_permutation(ordered, 2) == [1, 0] and teacher.requests == 2


# --- switches that need more than a CPU -------------------------------------------------------------------

def test_vllm_switch_reaches_trl(tmp_path):
    """TRL generates with vLLM when `grpo_vllm` is on (colocated on the training GPU). Only the
    configuration can be checked here: vLLM needs a CUDA GPU and is not installed."""
    assert not train.grpo_config(GPU, tmp_path).use_vllm
    config = train.grpo_config(get_preset("gpu", grpo_vllm=True), tmp_path)
    assert config.use_vllm and config.vllm_mode == "colocate"
    assert config.generation_batch_size % config.num_generations == 0


def test_gpu_grpo_generates_eight_per_update_and_trains_two_at_a_time(tmp_path):
    config = train.grpo_config(GPU, tmp_path)
    assert (config.num_generations, config.per_device_train_batch_size, config.generation_batch_size) == (8, 2, 8)


def test_accelerate_config_is_multi_gpu():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DistributedType

    path = str(PROJECT_ROOT / "configs" / "accelerate_multi_gpu.yaml")
    config = load_config_from_file(path)
    assert config.distributed_type == DistributedType.MULTI_GPU and config.num_processes >= 2
    assert config.mixed_precision == "no"  # the trainer arguments pick bf16 or fp16 per card
    args = launch_command_parser().parse_args(["--config_file", path, "-m", "grouprank_mini.train", "grpo", "--preset", "gpu"])
    args, _, _ = _validate_launch_command(args)  # what `accelerate launch` does with the file before starting
    assert args.multi_gpu and args.num_processes == config.num_processes and args.module


# --- the whole chain ---------------------------------------------------------------------------------------

def test_gpu_preset_dry_run(tmp_path):
    """Notebooks 00 -> 04 under the gpu preset on a CPU, then an interrupted GRPO run resumed
    (~4 min on two shared cores). `dry_run` raises on the first branch it finds not taken."""
    found = dryrun.dry_run("gpu", tmp_path)
    assert found["resumed to step"] == get_preset("gpu", **dryrun.SIZES).grpo_max_steps
    assert found["teacher requests"] > 0 and len(found["group sizes"]) > 1
    assert found["results"]["03_grpo"]["steps"] == dryrun.SIZES["grpo_max_steps"]
