# Two commands for a fresh machine: `make run` (the gateway in front of a simulated engine)
# and `make test` (lint and the whole test suite). Both build the virtualenv they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench

$(STAMP): pyproject.toml setup.py src/herdsman/multimodal/_resample.c src/herdsman/routing/_kvhash.c \
		src/herdsman/engines/_varint.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/herdsman serve --engine-sim --model-path models/qwen3 --host 127.0.0.1 --port 8000

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

# The real-engine tier (tests/integration) needs vLLM's CPU build in its own venv outside the
# clone (scripts/vllm_env.sh: built once, then reused); CI always runs it. HERDSMAN_SKIP_VLLM=1
# skips building it and the tier. Test files run on TEST_JOBS xdist workers (TEST_JOBS=0: in
# this process, one after another): a serial run keeps one core busy on average, as most tests
# wait for the processes they start.
TEST_JOBS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder

test: lint
	@if [ "$${HERDSMAN_SKIP_VLLM:-}" = 1 ]; then \
		echo "HERDSMAN_SKIP_VLLM=1: skipping the real-engine tier (tests/integration)"; \
		$(PYTEST); \
	else \
		vllm_python=$$(bash scripts/vllm_env.sh) && \
		HERDSMAN_VLLM_PYTHON=$$vllm_python $(PYTEST); \
	fi

bench: $(STAMP)
	./bench/run.sh
