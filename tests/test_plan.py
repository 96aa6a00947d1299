"""The planner's formulas against what torch holds on the CPU, on a tiny Qwen2 (4-bit, LoRA),
and its verdicts on the GPU presets.

Exact checks: weight bytes (nf4 data and quantisation constants), LoRA and AdamW bytes, TRL's
reference copy of the adapter, tensors saved for backward with and without gradient
checkpointing (saved-tensor hooks), the KV cache. Within 5% of torch's memory profiler: the
peak of a checkpointed backward and of a no-gradient prefill. What cannot be checked here (the
GPU path's dtypes, TRL's Triton log-probability tiles) is stated in plan.py.
"""
from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from torch.profiler import ProfilerActivity, profile

from grouprank_mini import llm, plan
from grouprank_mini.config import get_preset

RANK = 8
SIZES = dict(layers=3, hidden=64, intermediate=320, heads=4, kv_heads=2)  # a real model's intermediate/hidden ratio


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return llm.save_tiny_qwen2(tmp_path_factory.mktemp("plan") / "tiny-qwen2", llm.load_tokenizer(), **SIZES)


def four_bit(folder):
    model = llm.load_model(str(folder), quantize_4bit=True)
    return model, plan.Architecture.from_config(model.config)


def with_lora(model, checkpointing: bool, dropout: float = 0.05):
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    config = LoraConfig(r=RANK, lora_alpha=RANK, lora_dropout=dropout, target_modules=list(plan.PROJECTIONS),
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config).train()


def storages(tensors) -> dict[int, int]:
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t is not None}


def saved_bytes(model, forward, inside=None) -> int:
    """Bytes of the tensors autograd saves during `forward` (each storage once, parameters not),
    only those first saved while module `inside` runs when given."""
    parameters = set(storages(model.parameters()))
    seen, counted, active = set(), {}, [inside is None]
    if inside is not None:
        inside.register_forward_pre_hook(lambda *_: active.__setitem__(0, True))
        inside.register_forward_hook(lambda *_: active.__setitem__(0, False))

    def pack(tensor):
        key = tensor.untyped_storage().data_ptr()
        if key not in parameters and key not in seen:
            seen.add(key)
            if active[0]:
                counted[key] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(counted.values())


def profiled_peak(step) -> int:
    """The highest level torch's CPU allocator reaches above where it started, during `step`."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    level = peak = 0
    for event in events:
        level += event.nbytes()
        peak = max(peak, level)
    return peak


def token_ids(batch: int, tokens: int):
    return torch.randint(3, 1000, (batch, tokens), generator=torch.Generator().manual_seed(0))


# --- the model ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in plan.ARCHITECTURES if n.startswith("Qwen/")])
def test_parameter_counts_match_transformers(name):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    arch = plan.ARCHITECTURES[name]
    config = Qwen2Config(num_hidden_layers=arch.layers, hidden_size=arch.hidden, intermediate_size=arch.intermediate,
                         num_attention_heads=arch.heads, num_key_value_heads=arch.kv_heads, vocab_size=arch.vocab,
                         tie_word_embeddings=arch.tied)
    with torch.device("meta"):  # shapes only, no memory
        model = Qwen2ForCausalLM(config)
    linear = arch.layers * sum(i * o for i, o in plan.linear_shapes(arch).values())
    assert sum(p.numel() for p in model.parameters()) == linear + plan.other_parameters(arch)


def test_embedded_entry_is_the_embedded_models_config():
    from transformers import AutoConfig

    assert plan.Architecture.from_config(AutoConfig.from_pretrained(llm.embedded_checkpoint())) == plan.ARCHITECTURES["embedded"]


def test_weight_bytes_exact(tiny):
    model, arch = four_bit(tiny)
    quant = [t for m in model.modules() if isinstance(m, bnb.nn.Linear4bit) for qs in [m.weight.quant_state]
             for t in (qs.absmax, qs.code, qs.offset, qs.state2.absmax, qs.state2.code)]
    assert sum(storages([*model.parameters(), *quant]).values()) == plan.weight_bytes(arch, 4, quantize_4bit=True)


def test_lora_and_adamw_bytes_exact(tiny):
    model, arch = four_bit(tiny)
    model = with_lora(model, checkpointing=False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == plan.lora_parameters(arch, RANK, plan.PROJECTIONS)
    optimizer = torch.optim.AdamW(trainable)
    model(input_ids=token_ids(1, 16)).logits.float().mean().backward()
    optimizer.step()
    moments = [state[key] for state in optimizer.state.values() for key in ("exp_avg", "exp_avg_sq")]
    held = storages(trainable) | storages(p.grad for p in trainable) | storages(moments)
    n = plan.lora_parameters(arch, RANK, plan.PROJECTIONS)
    assert sum(held.values()) == plan.lora_state_bytes(n, reference_copy=False)


def test_grpo_reference_adapter_is_a_copy_of_the_lora(tiny, tmp_path):
    from datasets import Dataset

    from grouprank_mini import train

    model, arch = four_bit(tiny)
    preset = get_preset("smoke", model=str(tiny), quantize_4bit=True, lora_r=RANK, grpo_beta=0.1)
    get_peft_model(model, train.lora_config(preset)).save_pretrained(tmp_path / "sft")
    rows = Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}]}] * 2)
    trainer = train.grpo_trainer(preset, rows, sft_adapter=tmp_path / "sft", output_dir=tmp_path / "grpo",
                                 reward_funcs=[lambda completions, **_: [0.0] * len(completions)])
    reference = [p for name, p in trainer.model.named_parameters() if ".ref." in name]
    assert sum(p.numel() for p in reference) == plan.lora_parameters(arch, RANK, preset.lora_targets)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in reference)  # 4 bytes, no optimizer state


# --- activations and caches -------------------------------------------------------------------------

def test_checkpointed_activations_exact(tiny):
    model, arch = four_bit(tiny)
    model = with_lora(model, checkpointing=True)
    ids = token_ids(2, 48)
    assert saved_bytes(model, lambda: model(input_ids=ids).logits) == plan.checkpoint_bytes(arch, ids.numel(), 4)


@pytest.mark.parametrize("dropout", [0.05, 0.0])
def test_one_layers_saved_tensors_exact(tiny, dropout):
    """Without checkpointing, a middle layer saves exactly `layer_values` per token (a CPU keeps
    dropout masks as floats: 4 bytes)."""
    model, arch = four_bit(tiny)
    model = with_lora(model, checkpointing=False, dropout=dropout)
    ids = token_ids(2, 48)
    layer = model.base_model.model.model.layers[1]
    measured = saved_bytes(model, lambda: model(input_ids=ids).logits, inside=layer)
    assert measured == plan.layer_bytes(arch, RANK, ids.numel(), 4, dropout=dropout > 0, mask_bytes=4)


def test_checkpointed_backward_peak_within_5_percent(tiny):
    """The peak of forward + backward through the decoder (no LM head: TRL's tiles are GPU-path)."""
    model, arch = four_bit(tiny)
    model = with_lora(model, checkpointing=True)
    backbone, ids = model.base_model.model.model, token_ids(1, 2048)

    def step():
        backbone(input_ids=ids).last_hidden_state.float().pow(2).mean().backward()

    step()  # LoRA gradients are allocated once, before the measurement
    tokens = ids.numel()
    expected = (plan.checkpoint_bytes(arch, tokens, 4) + plan.layer_bytes(arch, RANK, tokens, 4, mask_bytes=4)
                + plan.backward_bytes(arch, tokens, 4))
    assert profiled_peak(step) == pytest.approx(expected, rel=0.05)


def test_kv_cache_exact(tiny):
    model, arch = four_bit(tiny)
    with torch.no_grad():
        cache = model(input_ids=token_ids(2, 37), use_cache=True).past_key_values
    held = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert held == plan.kv_cache_bytes(arch, 2, 37, 4)


def test_prefill_peak_within_5_percent(tiny):
    model, arch = four_bit(tiny)
    ids = token_ids(4, 1024)
    with torch.no_grad():  # as generate prefills: no cache kept here, logits of the last position only
        peak = profiled_peak(lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1))
    assert peak == pytest.approx(plan.prefill_bytes(arch, 4, 1024, 4), rel=0.05)


def test_log_probability_tiles_are_trls():
    from trl.kernels.chunked_logprob import TOKEN_CHUNK_SIZE
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    assert (plan.TRL_TOKEN_TILE, plan.TRL_VOCAB_TILE) == (TOKEN_CHUNK_SIZE, _CHUNKED_LOGPROB_CHUNK_SIZE)


def test_vllm_share_is_trls_default():
    from trl import GRPOConfig

    assert plan.VLLM_SHARE == GRPOConfig.__dataclass_fields__["vllm_gpu_memory_utilization"].default


# --- the presets ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset, gpu", [("gpu", "24"), ("gpu", "l4"), ("gpu", "rtx4090"), ("gpu-t4", "t4"), ("gpu-t4", "16")])
def test_gpu_presets_fit_their_cards(preset, gpu):
    _, card = plan.card_of(gpu)
    stages = plan.plan(get_preset(preset), card)
    assert plan.fits(stages, card) and not any(stage.warnings for stage in stages)


def test_the_planner_can_say_no():
    """The gpu preset as it stood before the planner (3000-character documents, 8 completions per
    micro-step, 1024-token budgets) fits nowhere near 24 GB, and its SFT would cut answers."""
    before = get_preset("gpu", doc_max_chars=3000, batch_size=8, grpo_batch_size=8, grpo_grad_accum=1,
                        max_new_tokens=1024, grpo_max_completion_length=1024)
    _, card = plan.card_of("24")
    stages = {stage.name.split()[0]: stage for stage in plan.plan(before, card)}
    assert not plan.fits(stages.values(), card)
    assert stages["GRPO"].peak > 1.5 * card.memory_gib * plan.GIB
    assert stages["SFT"].warnings and "answer" in stages["SFT"].warnings[0]


def test_t4_is_fp16_and_a_bare_size_takes_that_sizes_reference_card():
    name, card = plan.card_of("16")
    assert name == "16 GB at t4 speed" and not card.bf16 and card.memory_gib == pytest.approx(16e9 / plan.GIB)


def test_more_memory_per_longer_documents():
    _, card = plan.card_of("24")
    short, long = (plan.plan(get_preset("gpu", doc_max_chars=chars), card) for chars in (500, 1500))
    assert all(a.peak < b.peak for a, b in zip(short[1:], long[1:]))  # every stage that reads documents


def test_command_line_reports_every_stage(capsys):
    assert plan.main(["--preset", "gpu-t4", "--gpu", "t4"]) is True
    out = capsys.readouterr().out
    assert "Computed, not measured" in out and "fp16" in out
    assert all(name in out for name in ("teachers", "SFT", "GRPO", "evaluation"))
    assert plan.main(["--preset", "gpu", "--gpu", "12"]) is False
