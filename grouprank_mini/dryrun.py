"""The `gpu` preset's whole chain on a CPU: notebooks 00 -> 04 through the papermill pipeline,
every code path the GPU run takes, at sizes two CPU cores finish in minutes.

    make dryrun PRESET=gpu                     # = python -m grouprank_mini.dryrun --preset gpu

Only sizes change (`SIZES`, passed to every notebook as single-field overrides), never a code
path. What stands in for what a GPU run downloads or rents:

- **the model**: a Qwen2 with random weights in the layout of the preset's Qwen2.5 (grouped-query
  attention, q/k/v biases, tied embeddings), two layers, under Qwen's chat template
  (`llm.save_tiny_qwen2`), loaded in 4 bits through bitsandbytes' CPU backend as the preset says.
  Its tokenizer is byte-level BPE in Qwen's manner (single digits, ChatML's special tokens)
  learnt from the fixture (`tiny_tokenizer`): ~800 entries instead of 150k, because on a CPU
  TRL scores every position against the whole vocabulary (~20 s per 5000 tokens at 49k).
- **the collection**: a BRIGHT-shaped local folder (`write_bright`): topical queries, short and
  long documents (some over `doc_max_chars`), `excluded_ids` per query. A second copy whose
  excluded ids include a gold id is checked on its own (`check_gold_excluded`): BRIGHT forbids
  that, so the loader refuses it, and the chain runs on the clean copy.
- **the "llm" teachers**: `teacher_endpoint` points at an OpenAI-compatible server on 127.0.0.1
  started here (`ScriptedTeacher`). It answers with scripted, well-formed replies (scores and
  orders by word overlap with the query), not from a model: the teachers' path (endpoint
  backend, retries, caches, parsing, fusion) is what is under test, and random weights would
  give the fusion check in notebook 01 nothing to agree on.

The preset's own settings stay: 4-bit, reasoning, groups of 20, 4 passes, multi-scale groups of
5-20, 8 GRPO generations with gradient accumulation, the two ablations, and activation
checkpointing (forced on: TRL and transformers run it on a CPU, so the GPU branch is taken).

After the chain, `check_run` reads what it left (datasets, trainer arguments, executed
notebooks) to confirm each branch was taken; then the GRPO run is cut back to its first
checkpoint, as an interruption would leave it, and notebook 03 resumes it (`check_resume`).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from . import data, llm, pipeline
from .config import get_preset
from .runtime import cache_dir, grpo_dir

DOMAIN = "biology"
# The smallest sizes that still take every branch: one group of 20 per pass (rerank_depth 20), a
# pool of 20 so groups reach 20, 2 GRPO updates (a checkpoint to resume from), short budgets.
SIZES = dict(
    rerank_depth=20, pool_top_k=10, pool_random_m=10, pool_rank_max=30, analysis_queries=1,
    max_new_tokens=12, sft_max_steps=4, grpo_max_steps=2, grpo_max_completion_length=12,
    save_steps=1, threads=1, activation_checkpointing=True,
    # Random weights need a larger step than the preset's for the SFT loss to move in 4 steps
    # (notebook 02 checks that it went down).
    sft_lr=1e-3,
)
TOPICS = {
    "moths": "moths light navigation moon insects flight phototaxis",
    "roots": "roots gravity statoliths amyloplasts gravitropism plant auxin",
    "blood": "blood hemoglobin iron oxygen erythrocytes heme colour",
    "sleep": "sleep melatonin circadian rhythm adenosine brain night",
    "bees": "bees honey hive pollen waggle dance foraging",
    "fever": "fever temperature hypothalamus pyrogens immune infection",
    "leaves": "leaves autumn chlorophyll carotenoids anthocyanin colour trees",
    "venom": "venom snakes toxins proteins fangs prey enzymes",
}
EXCLUDED_GOLD = "blood-1"  # the gold id the "blood" query excludes in the check_gold_excluded copy
FILLER = "cell organism species energy water protein structure process evidence study".split()


# --- a BRIGHT-shaped folder -----------------------------------------------------------------------

def write_hub_folder(folder: Path, tables: dict[tuple[str, str], list[dict]]) -> Path:
    """{(config, split): rows} as parquet files plus the README whose YAML `configs:` tells
    `datasets` which file is which split: a hub dataset repository's layout, on disk."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    yaml, configs = ["---", "configs:"], {}
    for (config, split), rows in tables.items():
        path = f"{config}/{split}-00000-of-00001.parquet"
        (folder / config).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), folder / path)
        configs.setdefault(config, []).append((split, path))
    for config, files in configs.items():
        yaml += [f"- config_name: {config}", "  data_files:"]
        yaml += [line for split, path in files for line in (f"  - split: {split}", f"    path: {path}")]
    (folder / "README.md").write_text("\n".join(yaml + ["---", "", "BRIGHT-shaped dry-run fixture", ""]))
    return folder


def _text(rng: random.Random, topic: str, words: int) -> str:
    """Filler with the topic's words mixed in: BM25, MiniLM and the scripted teacher all find them."""
    vocabulary = TOPICS[topic].split()
    return " ".join(rng.choice(vocabulary if rng.random() < 0.3 else FILLER) for _ in range(words)) + "."


def bright_tables(seed: int = 0, gold_excluded: bool = False, docs_per_topic: int = 6) -> dict[tuple[str, str], list[dict]]:
    """Documents (every sixth one long, over 1500 characters, for the truncation branch) and one
    query per topic whose gold ids are three of its topic's documents. Most queries exclude
    another document of their topic, the others carry BRIGHT's "N/A" ("nothing excluded");
    with `gold_excluded` the "blood" query also excludes one of its own gold ids."""
    rng = random.Random(seed)
    docs, examples = [], []
    for t, topic in enumerate(TOPICS):
        ids = [f"{topic}-{k}" for k in range(docs_per_topic)]
        docs += [{"id": i, "content": _text(rng, topic, 400 if k == 0 else rng.randint(12, 40))} for k, i in enumerate(ids)]
        excluded = [ids[5]] + ([EXCLUDED_GOLD] if gold_excluded and topic == "blood" else []) if t % 3 else ["N/A"]
        examples.append({"id": str(t), "query": f"Why and how: {_text(rng, topic, 24)}", "reasoning": "",
                         "gold_ids": ids[:3], "gold_ids_long": ids[:1], "excluded_ids": excluded})
    return {("examples", DOMAIN): examples, ("documents", DOMAIN): docs}


def write_bright(folder: Path, seed: int = 0, gold_excluded: bool = False) -> Path:
    return write_hub_folder(Path(folder), bright_tables(seed, gold_excluded))


def check_gold_excluded(folder: Path) -> str:
    """A copy whose excluded_ids name one of the query's gold ids. BRIGHT's evaluation asserts
    that none does, so the loader may refuse such a copy (naming the id) or load it with the id
    excluded (never ranked, so never found); either is an answer, silence is not. The chain
    itself runs on the clean copy, so it passes under both rules."""
    from .collection import DataError

    write_bright(folder, gold_excluded=True)
    try:
        collection = data.load_collection(f"bright:{DOMAIN}@{folder}")
    except DataError as err:
        _require(EXCLUDED_GOLD in str(err), f"the refusal names the excluded gold id: {err}")
        return "refused by the loader"
    blood = str(list(TOPICS).index("blood"))
    _require(EXCLUDED_GOLD in collection.excluded.get(blood, set()), "the excluded gold id is excluded")
    return "loaded, the gold id excluded"


def tiny_tokenizer(tables: dict, vocab_size: int = 1024):
    """A byte-level BPE tokenizer learnt from the fixture's texts and the kit's prompt wording:
    Qwen's kind (bytes, digits one by one, <|endoftext|> <|im_start|> <|im_end|>), small vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from . import prompts

    docs = [row["content"] for row in tables[("documents", DOMAIN)]]
    queries = [row["query"] for row in tables[("examples", DOMAIN)]]
    wording = prompts.groupwise_messages(queries[0], docs[:2], 100, True) + prompts.listwise_messages(queries[0], docs[:2], 100)
    texts = docs + queries + [m["content"] for m in wording] + [prompts.answer_text(list(range(11))), "system user assistant"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")


# --- the scripted teacher ------------------------------------------------------------------------------

def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]{4,}", text.lower()) if w not in FILLER}


def scripted_reply(messages: list[dict]) -> str:
    """A well-formed teacher answer to a kit prompt: each numbered document scored 0-10 by how
    many of the query's topical words it shares, or (listwise prompt) the documents ordered so."""
    user = messages[-1]["content"]
    query = _words(user.split("\n\nDocuments:\n", 1)[0])
    docs = re.findall(r"^\[(\d+)\]\. (.*)$", user, flags=re.M)
    scores = [min(10, len(query & _words(text))) for _, text in docs]
    if "Order all" in user:
        order = sorted(range(len(docs)), key=lambda i: -scores[i])
        return "<answer>" + " > ".join(f"[{i + 1}]" for i in order) + "</answer>"
    return "<answer>" + json.dumps({f"[{i + 1}]": s for i, s in enumerate(scores)}) + "</answer>"


class ScriptedTeacher:
    """An OpenAI-compatible chat server on 127.0.0.1 (a free port) answering `scripted_reply`,
    in a daemon thread, for as long as the `with` block runs; `requests` counts the calls."""

    def __init__(self):
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                reply = {"choices": [{"message": {"role": "assistant", "content": scripted_reply(body["messages"])}}]}
                data = json.dumps(reply).encode()
                teacher.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # one line per request would drown the run's output
                pass

        self.requests = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


# --- the run ----------------------------------------------------------------------------------------------

@contextmanager
def _environment(**values):
    """Set environment variables for the notebook kernels the pipeline starts; restore them after."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def overrides(model: Path, bright: Path, teacher_url: str) -> dict:
    return {**SIZES, "model": str(model), "collection": f"bright:{DOMAIN}@{bright}", "teacher_endpoint": teacher_url}


def dry_run(preset_name: str = "gpu", workdir: Path | None = None) -> dict:
    """Run the chain and the resume in a fresh `workdir`; returns what `check_run` and
    `check_resume` found, the teacher's request count and the wall times."""
    workdir = Path(workdir or cache_dir() / f"dryrun-{preset_name}").resolve()
    shutil.rmtree(workdir, ignore_errors=True)  # a dry run proves the chain from nothing
    started = time.perf_counter()
    bright = write_bright(workdir / "BRIGHT")
    model = llm.save_tiny_qwen2(workdir / "model", tiny_tokenizer(bright_tables()))
    with ScriptedTeacher() as teacher, _environment(GROUPRANK_CACHE=str(workdir / "cache"), GROUPRANK_THREADS="1",
                                                     HF_DATASETS_CACHE=str(workdir / "hf-datasets")):
        settings = overrides(model, bright, teacher.url)
        preset = get_preset(preset_name, **settings)
        pipeline.run_notebooks(preset_name, workdir / "run", overrides=settings)
        chain = time.perf_counter() - started
        found = check_run(preset, workdir / "run")
        resumed = check_resume(preset_name, preset, settings, workdir / "resume")
        gold_excluded = check_gold_excluded(workdir / "BRIGHT-gold-excluded")
    return {**found, **resumed, "gold id excluded": gold_excluded, "teacher requests": teacher.requests,
            "chain seconds": round(chain),
            "total seconds": round(time.perf_counter() - started)}


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(f"dry run: {what}")


def _cell_text(notebook: Path, needle: str) -> str:
    """The text output of the executed cell whose source contains `needle`."""
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] == "code" and needle in "".join(cell["source"]):
            return "".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
                           for o in cell.get("outputs", []))
    raise AssertionError(f"dry run: no cell with {needle!r} in {notebook.name}")


def _training_args(folder: Path):
    import torch

    newest = max(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return torch.load(newest / "training_args.bin", weights_only=False)


def check_run(preset, run_dir: Path) -> dict:
    """What the executed chain left behind, read back for each gpu-only branch it should have taken."""
    from datasets import load_from_disk

    from .runtime import adapter_dir, dataset_dir

    results = json.loads((run_dir / "results.json").read_text())
    _require(set(results) >= {"00_quickstart", "01_data_synthesis", "02_sft_lora", "03_grpo", "04_evaluation"},
             f"every notebook saved its results, got {sorted(results)}")
    shown = _cell_text(run_dir / "00_quickstart.ipynb", "P = notebook.start")
    _require(all(re.search(rf"^{field}\s+True$", shown, re.M) for field in ("quantize_4bit", "reasoning")),
             "the notebooks ran the 4-bit reasoning preset")  # 00 shows the preset as a field/value table
    sft, rl = (load_from_disk(str(dataset_dir(preset, kind))) for kind in ("sft", "rl"))
    sizes = sorted({len(ids) for ids in sft["doc_ids"]})
    low, high = preset.synth_group_sizes
    _require(low <= sizes[0] and sizes[-1] <= high and len(sizes) > 1, f"multi-scale groups in {low}-{high}, got {sizes}")
    _require(all("<reason>" in row[-1]["content"] for row in rl["prompt"]), "RL prompts ask for <reason>")
    lines = [line for row in rl["prompt"] for line in row[-1]["content"].splitlines() if line.startswith("[")]
    _require(any(line.endswith(" ...") for line in lines), "a long document was cut at doc_max_chars")
    _require(max(map(len, lines)) <= preset.doc_max_chars + 12, "no document line is longer than the cap")
    sft_args, grpo_args = _training_args(adapter_dir(preset, "sft")), _training_args(grpo_dir(preset))
    _require(sft_args.activation_checkpointing and grpo_args.activation_checkpointing, "activation checkpointing was on")
    _require((grpo_args.num_generations, grpo_args.gradient_accumulation_steps) ==
             (preset.grpo_num_generations, preset.grpo_grad_accum), "GRPO ran the preset's generations and accumulation")
    _require(all((grpo_dir(preset, name) / "adapter_config.json").is_file() for name in ("no_utility", "no_alignment")),
             "both reward ablations were trained")
    return {"group sizes": sizes, "results": results}


def check_resume(preset_name: str, preset, settings: dict, run_dir: Path) -> dict:
    """Cut the GRPO run back to its first checkpoint (what an interruption after it leaves), run
    notebook 03 again and check that it continued from there instead of starting over."""
    folder = grpo_dir(preset)
    first, last = folder / "checkpoint-1", folder / f"checkpoint-{preset.grpo_max_steps}"
    _require(first.is_dir() and last.is_dir(), f"GRPO saved checkpoints 1 and {preset.grpo_max_steps}")
    shutil.rmtree(last)
    for finished in ("trainer_state.json", "adapter_model.safetensors"):
        (folder / finished).unlink()
    kept = (first / "trainer_state.json").stat().st_mtime_ns
    pipeline.run_notebooks(preset_name, run_dir, only=["03"], overrides=settings)
    state = json.loads((folder / "trainer_state.json").read_text())
    _require(state["global_step"] == preset.grpo_max_steps and last.is_dir(), "the resumed run reached its last step")
    _require((first / "trainer_state.json").stat().st_mtime_ns == kept, "it resumed from checkpoint-1, not from scratch")
    return {"resumed to step": state["global_step"]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gpu", help="the preset whose chain to run (default: gpu)")
    parser.add_argument("--workdir", type=Path, help="default: <cache>/dryrun-<preset>, emptied first")
    args = parser.parse_args(argv)
    found = dry_run(args.preset, args.workdir)
    print(f"\ndry run of {args.preset} passed in {found['total seconds'] / 60:.1f} min "
          f"(chain {found['chain seconds'] / 60:.1f} min): group sizes {found['group sizes']}, "
          f"{found['teacher requests']} teacher requests, GRPO resumed to step {found['resumed to step']}")
    return found


if __name__ == "__main__":
    main()
