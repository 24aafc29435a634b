# Two commands a new user needs: `make train` and `make test`. Both create .venv on first use.
# torch is pinned to the CPU build here so a fresh machine installs in seconds instead of pulling
# a multi-GB CUDA wheel; pyproject.toml keeps a normal range for real users.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
ARGS ?=

.PHONY: install train test check clean bench quality scale

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

train: install
	$(PY) -m fs2mini.train $(ARGS)

test: install
	$(PY) -m pytest -q tests

# Speed benchmark (benchmarks/bench.py): fp32 and, where the CPU has it, bf16; prints tables, writes
# benchmarks/results.json (~15 min on 2 cores).
bench: install
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/bench.py $(ARGS)

# Translation quality on equal terms with HF M2M100 (benchmarks/quality.py): trains both, one after
# the other, then prints BLEU and its parts; ~35 min on 2 cores. ARGS="--budget-minutes 18" for a time budget.
quality: install
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/quality.py $(ARGS)

# Preparation and training at 100 k, 1 M and 10 M pairs of recombined Bible verses (benchmarks/scale.py): times,
# cache size, peak RSS per rank, tokens/s, resume; writes benchmarks/scale.json (~30 min on 2 cores, ~13 GB of
# disk in /tmp at 10M). ARGS="--sizes 100k 1M" for fewer sizes.
scale: install
	$(PY) benchmarks/scale.py $(ARGS)

clean:
	rm -rf $(VENV) runs .cache
