"""Will a preset fit on one GPU, and how long will it run? Peak GPU memory, token counts and
time per stage, computed from the model's architecture and the preset: computed, not measured.

    python -m grouprank_mini.plan --preset gpu --gpu 24
    python -m grouprank_mini.plan --preset gpu-t4 --gpu t4 --doc-chars 474
    python -m grouprank_mini.plan --preset gpu --gpu 16 --set batch_size=4   # exit status 1: does not fit

Stages, each the way the kit runs it:

- **teachers** (notebook 01): the "llm" teachers' model (`teacher_model`) generating for
  `batch_size` prompts at once: pointwise prompts of one document, listwise windows of 20.
  Nothing on this card when `teacher_endpoint` serves them.
- **SFT** (notebook 02): `sft_batch_size` sequences of the largest synthesised group; a warning
  when that group is longer than `sft_max_length` (TRL would cut its answer).
- **GRPO** (notebook 03): `grpo_batch_size` x `grpo_grad_accum` completions generated together,
  trained on `grpo_batch_size` at a time; with `grpo_beta` > 0 TRL keeps a frozen copy of the
  adapter as the reference. Notebook 03 trains two ablations after the main run: time x3.
- **evaluation** (notebook 04): the base model and one 4-bit copy per trained adapter (SFT,
  GRPO, two ablations) loaded at once, groups of `group_size` generated `batch_size` at a time.

Peak memory takes every document at `doc_max_chars` (one such batch suffices to run out) and
the reasoning budgets in full; times take `--doc-chars` (default: the same, an upper bound).
Memory terms, `b` being the compute dtype's bytes (2: bf16, or fp16 on a T4):

- weights: decoder linear layers in nf4 with double-quantised constants (`nf4_bytes`);
  embeddings, norms, biases in `b`, upcast to fp32 for training by PEFT's
  `prepare_model_for_kbit_training`.
- LoRA: r·(in + out) fp32 parameters per target, with gradient and AdamW moments (16 bytes);
  TRL's reference copy 4 more.
- activations with gradient checkpointing: each decoder layer's input (`checkpoint_bytes`), the
  one layer being recomputed (`layer_values`), the gradients flowing through it (`backward_bytes`).
- log-probabilities: TRL 1.16 never materialises the logits; it projects 4096 tokens x 32768
  vocabulary entries at a time (`logprob_head_bytes`, the GPU path).
- KV cache: keys and values of every layer for every token of the batch (`kv_cache_bytes`);
  prefill: the MLP's widest moment (`prefill_bytes`).

tests/test_plan.py checks the formulas on the CPU on a tiny 4-bit Qwen2 with LoRA: weights,
LoRA, AdamW and TRL's reference copy, tensors saved with and without checkpointing and the KV
cache exactly; the peaks of a checkpointed backward and of a prefill within 5% of torch's memory
profiler. Not checkable here: the GPU path's own dtypes (fp32 norms, byte dropout masks,
bitsandbytes' CUDA kernels), TRL's Triton tiles, fragmentation (`MARGIN` leaves room for it).
Throughput is an assumption (`MATMUL_EFFICIENCY`, `BANDWIDTH_EFFICIENCY`, `STEP_FLOOR_PER_LAYER`
over the datasheet figures in `CARDS`): the times are an order of magnitude, not a promise.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field

from . import groups, prompts, teachers
from .config import get_preset
from .pipeline import field_value

GIB = 2 ** 30
CHARS_PER_TOKEN = 4.0  # assumption: the usual rule of thumb for English text and a BPE vocabulary
MARGIN = 0.85  # a plan "fits" if its peak stays below this share of the card (allocator slack, CUDA context)
MATMUL_EFFICIENCY = 0.35  # assumption: share of the card's dense tensor FLOPS that 4-bit HF training/prefill reach
BANDWIDTH_EFFICIENCY = 0.5  # assumption: share of memory bandwidth a decoding step reaches
STEP_FLOOR_PER_LAYER = 1e-3  # assumption: seconds per decoder layer of one eager transformers decoding step
TRL_TOKEN_TILE, TRL_VOCAB_TILE = 4096, 32768  # trl/kernels/chunked_logprob.py and trl/trainer/utils.py (1.16)
NF4_BLOCK, NESTED_BLOCK = 64, 256  # bitsandbytes' nf4 block size and its double-quantisation block
LISTWISE_WINDOW = 20  # the listwise teacher's and baseline's window (rerank.ListwiseReranker)
VLLM_SHARE = 0.3  # GRPOConfig.vllm_gpu_memory_utilization's default: the card share a colocated vLLM takes


# --- architectures --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Architecture:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool  # lm_head shares the embedding matrix
    qkv_bias: bool = True  # Qwen2 has biases on q, k, v

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @classmethod
    def from_config(cls, config) -> "Architecture":
        """The numbers of a transformers config (a local folder's, or a tiny test model's)."""
        return cls(config.num_hidden_layers, config.hidden_size, config.intermediate_size,
                   config.num_attention_heads, config.num_key_value_heads, config.vocab_size,
                   bool(config.tie_word_embeddings), getattr(config, "attention_bias", config.model_type == "qwen2"))


# The models' published config.json values on the hub (num_hidden_layers, hidden_size,
# intermediate_size, num_attention_heads, num_key_value_heads, vocab_size, tie_word_embeddings).
ARCHITECTURES = {
    "Qwen/Qwen2.5-0.5B-Instruct": Architecture(24, 896, 4864, 14, 2, 151936, True),
    "Qwen/Qwen2.5-1.5B-Instruct": Architecture(28, 1536, 8960, 12, 2, 151936, True),
    "Qwen/Qwen2.5-3B-Instruct": Architecture(36, 2048, 11008, 16, 2, 151936, True),
    "Qwen/Qwen2.5-7B-Instruct": Architecture(28, 3584, 18944, 28, 4, 152064, False),
    "Qwen/Qwen2.5-14B-Instruct": Architecture(48, 5120, 13824, 40, 8, 152064, False),
    "embedded": Architecture(30, 576, 1536, 9, 3, 49152, True, qkv_bias=False),  # SmolLM2-135M-Instruct
}

# Queries per BRIGHT domain (the hub dataset card's split sizes).
BRIGHT_QUERIES = {"biology": 103, "earth_science": 116, "economics": 103, "psychology": 101, "robotics": 101,
                  "stackoverflow": 117, "sustainable_living": 108, "leetcode": 142, "pony": 112, "aops": 111,
                  "theoremqa_questions": 194, "theoremqa_theorems": 76}


@dataclass(frozen=True)
class Card:
    memory_gib: float
    tflops: float  # dense bf16 (fp16 on a T4) tensor TFLOPS, vendor datasheet
    bandwidth_gbs: float  # memory bandwidth, vendor datasheet
    bf16: bool


# Vendor figures: NVIDIA T4 datasheet (65 TFLOPS mixed precision, 320 GB/s), L4 datasheet (242 bf16
# TFLOPS with sparsity = 121 dense, 300 GB/s), Ada whitepaper for the RTX 4090 (165 bf16 TFLOPS with
# fp32 accumulate, 1008 GB/s), A100 datasheet (312 bf16 TFLOPS, 1555 GB/s for the 40 GB card).
CARDS = {  # memory as CUDA reports it (GiB), a little below the marketed GB
    "t4": Card(15.0, 65, 320, bf16=False),
    "l4": Card(22.5, 121, 300, bf16=True),
    "rtx4090": Card(24.0, 165, 1008, bf16=True),
    "a100-40gb": Card(39.6, 312, 1555, bf16=True),
}
CARD_FOR_MEMORY = {12: "t4", 16: "t4", 24: "l4", 40: "a100-40gb"}  # the time reference of a bare `--gpu N`


# --- what the model itself holds ------------------------------------------------------------------

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def linear_shapes(arch: Architecture) -> dict[str, tuple[int, int]]:
    """(in, out) of every linear layer of one decoder layer, by the names LoRA targets use."""
    q, kv, h, i = arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim, arch.hidden, arch.intermediate
    return dict(zip(PROJECTIONS, [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]))


def nf4_bytes(weights: int) -> int:
    """One nf4 weight matrix as bitsandbytes stores it with double quantisation: two weights per
    byte, one uint8 absmax per block of 64, one fp32 absmax per 256 of those, and the tensor's
    constants (the 16-value nf4 code, the 256-value code of the nested absmax, an fp32 offset)."""
    blocks = math.ceil(weights / NF4_BLOCK)
    return math.ceil(weights / 2) + blocks + 4 * math.ceil(blocks / NESTED_BLOCK) + 4 * (16 + 256 + 1)


def other_parameters(arch: Architecture) -> int:
    """Everything bitsandbytes leaves unquantised: embeddings (and an untied lm_head), norms, biases."""
    bias = (arch.heads + 2 * arch.kv_heads) * arch.head_dim if arch.qkv_bias else 0
    embeddings = arch.vocab * arch.hidden * (1 if arch.tied else 2)
    return embeddings + arch.layers * (2 * arch.hidden + bias) + arch.hidden


def weight_bytes(arch: Architecture, b: int, quantize_4bit: bool = True, training: bool = False) -> int:
    """The base model in memory; for 4-bit training the unquantised part is upcast to fp32 by PEFT."""
    linear = [i * o for i, o in linear_shapes(arch).values()]
    if quantize_4bit:
        return arch.layers * sum(map(nf4_bytes, linear)) + other_parameters(arch) * (4 if training else b)
    return (arch.layers * sum(linear) + other_parameters(arch)) * b


def lora_parameters(arch: Architecture, rank: int, targets) -> int:
    shapes = linear_shapes(arch)
    return arch.layers * sum(rank * sum(shapes[name]) for name in targets)


def lora_state_bytes(lora: int, reference_copy: bool) -> int:
    """fp32 LoRA weights, their gradients and AdamW's two moments; TRL's frozen "ref" copy of the
    adapter when GRPO has a KL term."""
    return lora * (16 + (4 if reference_copy else 0))


# --- what a step holds ------------------------------------------------------------------------------

def layer_values(arch: Architecture, rank: int, dropout: bool = True) -> tuple[int, int, int]:
    """Per token, the tensors one QLoRA decoder layer saves for backward (LoRA on all seven linear
    layers, SDPA attention), as (values in the compute dtype, dropout masks, fp32 values).

    Always: SDPA's query and output (2·hidden), keys and values (2·kv dims), log-sum-exp (heads);
    the MLP's gate, activation and up outputs (3·intermediate); each LoRA A output (7·rank); the
    two RMSNorms' fp32 inputs and inverse norms. The LoRA A inputs: with dropout, each of the seven
    layers' input after its own dropout (6·hidden + intermediate) and a mask each (floats on a
    CPU, bytes on a GPU); without (GRPO: TRL's disable_dropout), the shared inputs themselves, of
    which the two normed inputs and the MLP product are new (2·hidden + intermediate)."""
    kv = arch.kv_heads * arch.head_dim
    inputs = sum(i for i, _ in linear_shapes(arch).values())  # 6·hidden + intermediate
    lora_inputs = inputs if dropout else 2 * arch.hidden + arch.intermediate
    act = 2 * arch.hidden + 2 * kv + arch.heads + 3 * arch.intermediate + 7 * rank + lora_inputs
    return act, inputs if dropout else 0, 2 * arch.hidden + 2


def layer_bytes(arch: Architecture, rank: int, tokens: int, b: int, dropout: bool = True, mask_bytes: int = 1) -> int:
    act, masks, fp32 = layer_values(arch, rank, dropout)
    return tokens * (act * b + masks * mask_bytes + fp32 * 4)


def checkpoint_bytes(arch: Architecture, tokens: int, b: int) -> int:
    """Gradient checkpointing keeps each decoder layer's input, and the final norm keeps its fp32
    input and inverse norm (the lm_head is frozen, so it keeps nothing)."""
    return tokens * (arch.layers * arch.hidden * b + (arch.hidden + 1) * 4)


def logprob_head_bytes(arch: Architecture, scored: int, b: int) -> int:
    """TRL's chunked log-probabilities for `scored` tokens: one logits tile, the hidden states it
    reads (a copy of the scored rows) and their fp32 gradient."""
    tile = min(scored, TRL_TOKEN_TILE) * min(arch.vocab, TRL_VOCAB_TILE) * b
    return tile + scored * arch.hidden * (b + 4)


def kv_cache_bytes(arch: Architecture, sequences: int, tokens: int, b: int) -> int:
    return 2 * arch.layers * arch.kv_heads * arch.head_dim * sequences * tokens * b


def backward_bytes(arch: Architecture, tokens: int, b: int) -> int:
    """Gradients in flight while one recomputed layer runs backward: intermediate + 4·hidden
    values per token (fitted to torch's memory profiler on tiny models, see tests/test_plan.py)."""
    return tokens * (arch.intermediate + 4 * arch.hidden) * b


def prefill_bytes(arch: Architecture, sequences: int, tokens: int, b: int) -> int:
    """The widest moment of a no-gradient forward, inside the MLP: its activation, up projection
    and their product (3·intermediate), four hidden-wide tensors (residual stream, attention output,
    normed input and its copy) and the rotary tables (2·head dim) per token; plus the one weight
    matrix bitsandbytes dequantises for a GPU matmul."""
    widest = max(i * o for i, o in linear_shapes(arch).values())
    per_token = 3 * arch.intermediate + 4 * arch.hidden + 2 * arch.head_dim
    return sequences * tokens * per_token * b + widest * b


# --- sequence lengths and counts of the preset --------------------------------------------------------

def tokens_of(text_chars: int) -> int:
    return math.ceil(text_chars / CHARS_PER_TOKEN)


def prompt_tokens(n_docs: int, doc_chars: int, reasoning: bool, listwise: bool = False) -> int:
    """A groupwise (or listwise) prompt of `n_docs` documents of `doc_chars` characters each and a
    1000-character query (the prompt's cap), as the kit writes it, plus ChatML's role markers."""
    doc, query = ("word " * (doc_chars // 5 + 1))[:doc_chars], "q" * 1000
    docs = [doc] * n_docs
    messages = (prompts.listwise_messages(query, docs, doc_chars) if listwise
                else prompts.groupwise_messages(query, docs, doc_chars, reasoning))
    return sum(tokens_of(len(m["content"])) + 5 for m in messages) + 3


def answer_tokens(n_docs: int) -> int:
    return tokens_of(len(prompts.answer_text([10] * n_docs)))


def generate_budget(preset, n_docs: int) -> int:
    """New tokens a groupwise prompt may generate (rerank.GroupwiseReranker's rule)."""
    from .rerank import GroupwiseReranker

    return GroupwiseReranker(None, preset)._budget(n_docs)


def query_split(preset, queries: int) -> dict[str, int]:
    test, dev = round(queries * preset.test_fraction), round(queries * preset.dev_fraction)
    return {"train": min(queries - test - dev, preset.synth_queries or queries),
            "dev": dev, "test": min(test, preset.eval_queries or test)}


def queries_of(preset) -> int:
    kind, _, spec = preset.collection.partition(":")
    domain = spec.split("@")[0].split(":")[0]
    if kind != "bright" or domain not in BRIGHT_QUERIES:
        raise KeyError(f"no query count known for {preset.collection!r}; pass --queries")
    return BRIGHT_QUERIES[domain]


# --- stages ---------------------------------------------------------------------------------------------

@dataclass
class Stage:
    name: str
    memory: dict[str, int]  # bytes per term; the peak is their sum
    prompt_tokens: int = 0  # tokens read (prefill or training) over the whole stage
    generated_tokens: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return sum(self.memory.values())


def _backward(arch: Architecture, rank: int, tokens: int, scored: int, b: int, dropout: bool) -> dict[str, int]:
    """The activation terms of a training step on `tokens` tokens, `scored` of them in the loss."""
    return {"checkpoints": checkpoint_bytes(arch, tokens, b),
            "one layer recomputed": layer_bytes(arch, rank, tokens, b, dropout),
            "gradients in flight": backward_bytes(arch, tokens, b), "log-probabilities": logprob_head_bytes(arch, scored, b)}


def _architecture(model: str) -> Architecture:
    if model in ARCHITECTURES:
        return ARCHITECTURES[model]
    from transformers import AutoConfig

    return Architecture.from_config(AutoConfig.from_pretrained(model))  # a local folder


def _forward_flops(arch: Architecture, tokens: int, context: int) -> float:
    """2 FLOPs per weight per token, plus causal attention over `context` tokens."""
    weights = arch.layers * sum(i * o for i, o in linear_shapes(arch).values()) + arch.vocab * arch.hidden
    return 2 * weights * tokens + 2 * arch.layers * arch.hidden * tokens * context


def _matmul_seconds(flops: float, card: Card) -> float:
    return flops / (card.tflops * 1e12 * MATMUL_EFFICIENCY)


def _decode_seconds(arch: Architecture, steps: int, batch: int, context: int, weights: int, b: int, card: Card) -> float:
    """Each step reads every weight and the batch's KV cache once (bandwidth-bound), is compute-bound,
    or, at small batches, bound by launching tens of small kernels per layer (`STEP_FLOOR_PER_LAYER`)."""
    read = weights + kv_cache_bytes(arch, batch, context, b)
    per_step = max(read / (card.bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY),
                   _matmul_seconds(_forward_flops(arch, batch, context), card), STEP_FLOOR_PER_LAYER * arch.layers)
    return steps * per_step


def _generation(arch, preset, card, b, calls: int, longest: int, mean: int, new: int) -> tuple[dict, int, int, float]:
    """Memory terms (prompts of `longest` tokens), tokens read and written and seconds (prompts of
    `mean` tokens) of `calls` prompts generated `batch_size` at a time, up to `new` tokens each."""
    batch = max(min(preset.batch_size, calls), 1)
    weights = weight_bytes(arch, b, preset.quantize_4bit)
    memory = {"weights": weights, "KV cache": kv_cache_bytes(arch, batch, longest + new, b),
              "prefill": prefill_bytes(arch, batch, longest, b)}
    seconds = math.ceil(calls / batch) * (_matmul_seconds(_forward_flops(arch, batch * mean, mean), card)
                                          + _decode_seconds(arch, new, batch, mean + new, weights, b, card))
    return memory, calls * mean, calls * new, seconds


def teacher_stage(preset, card: Card, queries: dict, b: int, doc_chars: int, mean_chars: int) -> Stage:
    if preset.teacher_endpoint or "llm" not in (preset.pointwise_teacher, preset.listwise_teacher):
        return Stage("teachers", {"served elsewhere (teacher_endpoint) or offline": 0})
    arch = _architecture(teachers.teacher_model_name(preset))
    teacher = teachers._teacher_preset(preset)  # answer-only prompts and budgets
    pool = preset.pool_top_k + preset.pool_random_m
    windows = len(groups.window_starts(pool, LISTWISE_WINDOW, LISTWISE_WINDOW // 2))
    point = _generation(arch, teacher, card, b, queries["train"] * pool, prompt_tokens(1, doc_chars, False),
                        prompt_tokens(1, mean_chars, False), generate_budget(teacher, 1))
    listing = _generation(arch, teacher, card, b, queries["train"] * windows,
                          prompt_tokens(LISTWISE_WINDOW, doc_chars, False, listwise=True),
                          prompt_tokens(LISTWISE_WINDOW, mean_chars, False, listwise=True),
                          6 * LISTWISE_WINDOW + 16)  # rerank.ListwiseReranker's budget
    memory = max(point[0], listing[0], key=lambda m: sum(m.values()))
    return Stage("teachers", memory, point[1] + listing[1], point[2] + listing[2], point[3] + listing[3])


def sft_stage(preset, card: Card, queries: dict, b: int, doc_chars: int, mean_chars: int) -> Stage:
    arch = _architecture(preset.model)
    low, high = preset.synth_group_sizes
    full = prompt_tokens(high, doc_chars, False) + answer_tokens(high)
    longest = min(preset.sft_max_length, full)
    tokens = preset.sft_batch_size * longest
    lora = lora_parameters(arch, preset.lora_r, preset.lora_targets)
    memory = {"weights": weight_bytes(arch, b, preset.quantize_4bit, training=True),
              "LoRA + AdamW": lora_state_bytes(lora, reference_copy=False),
              **_backward(arch, preset.lora_r, tokens, preset.sft_batch_size * answer_tokens(high), b,
                           dropout=preset.lora_dropout > 0)}
    rows = queries["train"] * preset.synth_groups_per_pool
    batch = preset.sft_batch_size * preset.sft_grad_accum
    steps = preset.sft_max_steps if preset.sft_max_steps > 0 else math.ceil(rows * preset.sft_epochs / batch)
    mean = min(preset.sft_max_length, prompt_tokens((low + high) // 2, mean_chars, False) + answer_tokens((low + high) // 2))
    seen = steps * batch * mean
    seconds = 3 * _matmul_seconds(_forward_flops(arch, seen, mean), card)  # forward, recomputed forward, backward
    cut = [f"a {high}-document group needs ~{full} tokens > sft_max_length {preset.sft_max_length}: TRL cuts "
           "the end, i.e. the answer"] if full > preset.sft_max_length else []
    return Stage("SFT", memory, seen, 0, seconds, cut)


def grpo_stage(preset, card: Card, b: int, doc_chars: int, mean_chars: int, runs: int = 3) -> Stage:
    """One update: `grpo_batch_size` x `grpo_grad_accum` completions generated at once, then trained
    on `grpo_batch_size` at a time. With `grpo_vllm`, vLLM generates inside the share of the card
    TRL gives it (`VLLM_SHARE`, its colocate default) instead of the training model."""
    arch = _architecture(preset.model)
    low, high = preset.synth_group_sizes
    prompt, completion = prompt_tokens(high, doc_chars, preset.reasoning), preset.grpo_max_completion_length
    micro, generated = preset.grpo_batch_size, preset.grpo_batch_size * preset.grpo_grad_accum
    lora = lora_parameters(arch, preset.lora_r, preset.lora_targets)
    tokens = micro * (prompt + completion)
    training = _backward(arch, preset.lora_r, tokens, micro * completion, b, dropout=False)  # TRL's disable_dropout
    if preset.grpo_vllm:
        generating = {"vLLM's share of the card": int(VLLM_SHARE * card.memory_gib * GIB)}
    else:
        generating = {"KV cache": kv_cache_bytes(arch, generated, prompt + completion, b),
                      "prefill": prefill_bytes(arch, generated, prompt, b)}
    memory = {"weights": weight_bytes(arch, b, preset.quantize_4bit, training=True),
              "LoRA + AdamW (+ ref copy)": lora_state_bytes(lora, reference_copy=preset.grpo_beta > 0),
              **(training | generating if preset.grpo_vllm else max(training, generating, key=lambda m: sum(m.values())))}
    mean = prompt_tokens((low + high) // 2, mean_chars, preset.reasoning)
    passes = 3 + (1 if preset.grpo_beta > 0 else 0)  # training (3 forward passes' worth), reference log-probs
    update = (_matmul_seconds(_forward_flops(arch, generated * (mean + completion), mean + completion) * passes, card)
              + _matmul_seconds(_forward_flops(arch, generated * mean, mean), card)
              + _decode_seconds(arch, completion, generated, mean + completion, weight_bytes(arch, b, preset.quantize_4bit), b, card))
    updates = preset.grpo_max_steps * runs
    return Stage(f"GRPO (x{runs} runs)" if runs > 1 else "GRPO", memory, updates * generated * (mean + completion),
                 updates * generated * completion, updates * update)


def evaluation_stage(preset, card: Card, queries: dict, b: int, doc_chars: int, mean_chars: int, models: int = 5) -> Stage:
    """Notebook 04: `models` copies of the base (zero-shot, SFT, GRPO, two ablations) with their
    adapters, each reranking the test queries by generation and by token probabilities."""
    arch = _architecture(preset.model)
    group = min(preset.group_size, preset.rerank_depth)
    calls = queries["test"] * len(groups.multi_pass_groups(preset.rerank_depth, group, preset.passes, 0)) * models
    mean = prompt_tokens(group, mean_chars, preset.reasoning)
    memory, read, written, seconds = _generation(arch, preset, card, b, calls, prompt_tokens(group, doc_chars, preset.reasoning),
                                                 mean, generate_budget(preset, group))
    memory["weights"] *= models
    memory["adapters (fp32)"] = (models - 1) * 4 * lora_parameters(arch, preset.lora_r, preset.lora_targets)
    scoring = _matmul_seconds(_forward_flops(arch, read, mean), card)  # token probabilities: one forward per prompt
    return Stage(f"evaluation ({models} models)", memory, 2 * read, written, seconds + scoring)


def plan(preset, card: Card, queries: int | None = None, doc_chars: int | None = None) -> list[Stage]:
    """Every stage of `preset` on `card`. Peak memory assumes every document at `doc_max_chars`
    (one such batch is enough to run out of memory); times use `doc_chars` (default: the same)."""
    b = 2  # bf16 or fp16: a GPU computes in one of them (llm.device_dtype)
    split = query_split(preset, queries or queries_of(preset))
    mean = min(doc_chars or preset.doc_max_chars, preset.doc_max_chars)
    cap = preset.doc_max_chars
    return [teacher_stage(preset, card, split, b, cap, mean), sft_stage(preset, card, split, b, cap, mean),
            grpo_stage(preset, card, b, cap, mean), evaluation_stage(preset, card, split, b, cap, mean)]


# --- command line ------------------------------------------------------------------------------------

def card_of(value: str) -> tuple[str, Card]:
    """`--gpu`: a card name, or a memory size in GB (times then use that size's reference card)."""
    if value in CARDS:
        return value, CARDS[value]
    size = float(value)
    name = CARD_FOR_MEMORY.get(round(size), "l4")
    card = Card(size * 1e9 / GIB, CARDS[name].tflops, CARDS[name].bandwidth_gbs, CARDS[name].bf16)
    return f"{size:g} GB at {name} speed", card


def report(preset, card_name: str, card: Card, stages: list[Stage]) -> str:
    limit = card.memory_gib * MARGIN
    lines = [f"preset {preset.name}: {preset.model}, 4-bit={preset.quantize_4bit}, card {card_name} "
             f"({card.memory_gib:.1f} GiB; fits = peak <= {MARGIN:.0%} of it). Computed, not measured.", ""]
    for stage in stages:
        verdict = "fits" if stage.peak <= limit * GIB else "DOES NOT FIT"
        lines.append(f"{stage.name:<22} peak {stage.peak / GIB:6.2f} GiB  {verdict:<12} "
                     f"tokens read {stage.prompt_tokens:>12,}  generated {stage.generated_tokens:>11,}  "
                     f"~{stage.seconds / 3600:5.1f} h")
        lines += [f"    {term:<28} {value / GIB:6.2f} GiB" for term, value in stage.memory.items()]
        lines += [f"    WARNING: {warning}" for warning in stage.warnings]
    total = sum(s.seconds for s in stages) / 3600
    lines += ["", f"all stages ~{total:.1f} h on {card_name} (throughput assumed: {MATMUL_EFFICIENCY:.0%} of "
              f"{card.tflops:g} TFLOPS, {BANDWIDTH_EFFICIENCY:.0%} of {card.bandwidth_gbs:g} GB/s)"]
    if not card.bf16:
        lines.append("no bf16 on this card: the kit trains and generates in fp16 (llm.device_dtype)")
    return "\n".join(lines)


def fits(stages: list[Stage], card: Card) -> bool:
    return all(stage.peak <= card.memory_gib * MARGIN * GIB for stage in stages)


def main(argv=None) -> bool:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gpu")
    parser.add_argument("--gpu", default="24", help=f"memory in GB, or one of {sorted(CARDS)}")
    parser.add_argument("--queries", type=int, help="queries in the collection (default: known for BRIGHT domains)")
    parser.add_argument("--doc-chars", type=int, help="typical document length for the times (default: doc_max_chars)")
    parser.add_argument("--set", type=field_value, action="append", default=[], metavar="FIELD=VALUE",
                        help="override one Preset field, e.g. --set batch_size=4 (repeatable)")
    args = parser.parse_args(argv)
    preset = get_preset(args.preset, **dict(args.set))
    name, card = card_of(args.gpu)
    stages = plan(preset, card, args.queries, args.doc_chars)
    print(report(preset, name, card, stages))
    return fits(stages, card)


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
