# Set-up and checks on a fresh machine: `make train` (the main job: effdrop-train's default run on the
# built-in digits; TRAIN_ARGS="..." adds flags), `make test` (all tests). `make demo` shows the four ops on a batch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and torchvision as a matching pair; override for another platform or CUDA build
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

# the Triton release of the GPU machine, tested beside the one torch brings
TRITON_OLD ?= triton==3.6.0

.PHONY: install train demo test test-fallback test-interpret test-triton-old test-bench bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[test,bench,train]"
	touch $@

train: install
	$(VENV)/bin/effdrop-train $(TRAIN_ARGS)

demo: install
	$(PY) -m effdrop_triton

test: test-fallback test-interpret test-triton-old test-bench

test-fallback: install
	$(PY) -m pytest tests -q -ra

# Triton kernels on the CPU: TRITON_INTERPRET must be set before the kernels are defined
INTERPRET_TESTS := $(wildcard tests/test_*interpret*.py)
test-interpret: install
	TRITON_INTERPRET=1 $(PY) -m pytest $(INTERPRET_TESTS) -q

# the kernels under the older Triton too: interpreter parity, sm_90 compilation, and the Triton path
# traced into compiled graphs (wrap_triton's analysis of what each kernel writes compiles it)
$(VENV)/triton-old/.installed: $(VENV)/.installed
	$(PY) -m pip install --quiet --no-deps --target $(VENV)/triton-old $(TRITON_OLD)
	touch $@

test-triton-old: $(VENV)/triton-old/.installed
	PYTHONPATH=$(VENV)/triton-old $(PY) -c "import triton; print(\"Triton\", triton.__version__)"
	TRITON_INTERPRET=1 PYTHONPATH=$(VENV)/triton-old $(PY) -m pytest $(INTERPRET_TESTS) -q -p no:cacheprovider
	PYTHONPATH=$(VENV)/triton-old $(PY) -m pytest tests/test_kernels_compile.py -q -p no:cacheprovider
	PYTHONPATH=$(VENV)/triton-old $(PY) -m pytest tests/test_compiled_step.py -q -p no:cacheprovider \
		-k "conv_block or (triton_path and resnext)"

# the benchmark suites in a reduced form (smallest shape, no timing) so they cannot rot, the report
# tests, and bench/gpu_check.sh --dry-run end to end
test-bench: install
	$(PY) -m pytest bench -q --benchmark-disable --bench-shapes=small

# CPU benchmark run: the CPU-meaningful part (the fallback against the PyTorch baselines, fp32, the
# small and the 4M-element shape), as ratios, written to bench/results/ (JSON, markdown, chart).
# glibc's mmap threshold is pinned so that every provider reuses heap memory: with the default,
# 16 MiB outputs are mmapped afresh on some calls and first-touch page faults swamp the timings.
# One intra-op thread by default: on a small shared machine a preempted worker thread stalls every
# parallel op by a scheduler tick, which swamps the timings too (BENCH_THREADS=2 to use two).
# Times are the fastest of >= 30 rounds: there, preempted rounds make the median bimodal.
BENCH_THREADS ?= 1
BENCH_STAT ?= min
BENCH_OUT := bench/results/cpu-$(shell date +%Y-%m-%d)
bench: install
	mkdir -p bench/results
	MALLOC_MMAP_THRESHOLD_=4000000000 MALLOC_TRIM_THRESHOLD_=4000000000 OMP_NUM_THREADS=$(BENCH_THREADS) \
		$(PY) -m pytest bench/test_bench_*.py -q --bench-shapes=small,cpu4m --bench-dtypes=fp32 \
		--benchmark-min-rounds=30 --benchmark-max-time=1 --benchmark-columns=median,iqr,rounds \
		--benchmark-json=$(BENCH_OUT).json
	$(PY) -m bench.report $(BENCH_OUT).json --stat $(BENCH_STAT) --out $(BENCH_OUT).md --plot $(BENCH_OUT).png
