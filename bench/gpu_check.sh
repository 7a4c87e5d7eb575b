#!/usr/bin/env bash
# One-shot check of effdrop_triton on a CUDA machine that has torch and Triton but no network:
#   1. install    pip install --no-deps --no-build-isolation -e .   (the checkout this script sits in)
#   2. versions   nvidia-smi, torch, CUDA, Triton, the device and its compute capability
#   3. cuda-tests tests/test_cuda.py (Triton vs fallback parity on the GPU, torch.compile, int64 offsets)
#                 spread over the cores with pytest-xdist when it is installed
#   4. e2e        the bf16 training steps of bench/test_bench_e2e.py: eager, compiled and reduce-overhead
#                 (CUDA graphs), package model against its PyTorch twin, images/s and peak memory
#   5. benchmarks bench/test_bench_*.py on the GPU (less step 4's cases), headline cases first, cut to
#                 the time budget
#   6. report     python -m bench.report: markdown table, targets and bar chart (steps 4 and 5 share
#                 bench.log and one JSON file: the GPU machine returns at most 8 files)
# then a one-screen summary: pass/fail per stage and the headline ratios. Every stage runs
# even when an earlier one failed.
#
#   bash bench/gpu_check.sh [--out DIR] [--budget 6m | 360s | 360] [--no-graphs] [--dry-run]
#
# --out DIR   logs, benchmark JSON, report and summary (8 files); default $OUT when set,
#             else ./gpu-check-<date>
# --budget    wall-clock budget of the whole script (default 6 minutes); the CUDA tests get
#             at most two fifths, the training steps at most half of what is left, the benchmarks
#             the rest less a reserve for the report
# --no-graphs time the benchmarks eagerly only, not also replayed as CUDA graphs (--bench-no-graphs):
#             more cases within a short budget
# --dry-run   run every stage with the CUDA parts skipped (install resolves without installing,
#             the CUDA tests skip, the benchmarks time the CPU fallback and baselines once on the
#             small shape), to check the script on a machine without a GPU; the GPU stays hidden
#             (CUDA_VISIBLE_DEVICES=) where there is one. A run without --dry-run on a machine
#             without CUDA does the same and exits non-zero.
# PYTHON      the interpreter (default python3)
set -u

usage() { awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; }

die() { echo "gpu_check.sh: $1" >&2; exit 2; }

BUDGET_ARG=6m
OUT_DIR=${OUT:-}
DRY=0
GRAPHS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT_DIR=$2; shift 2 ;;
        --out=*) OUT_DIR=${1#--out=}; shift ;;
        --budget) [ $# -ge 2 ] || die "--budget needs a value"; BUDGET_ARG=$2; shift 2 ;;
        --budget=*) BUDGET_ARG=${1#--budget=}; shift ;;
        --no-graphs) GRAPHS=(--bench-no-graphs); shift ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
done

case "$BUDGET_ARG" in
    *[0-9]m) BUDGET=$(( ${BUDGET_ARG%m} * 60 )) ;;
    *[0-9]s) BUDGET=${BUDGET_ARG%s} ;;
    *) BUDGET=$BUDGET_ARG ;;
esac
case "$BUDGET" in
    ''|*[!0-9]*) die "--budget takes seconds or minutes (360, 360s, 6m), got '$BUDGET_ARG'" ;;
esac

DATE=$(date -u +%Y-%m-%d)
OUT_DIR=${OUT_DIR:-gpu-check-$DATE}
mkdir -p "$OUT_DIR" || die "cannot create $OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)  # absolute, relative to where the script was called from
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python3}
START=$(date +%s)
export PYTHONUNBUFFERED=1

elapsed() { echo $(( $(date +%s) - START )); }
remaining() { echo $(( BUDGET - $(elapsed) )); }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }
max() { if [ "$1" -gt "$2" ]; then echo "$1"; else echo "$2"; fi; }

NAMES=(); RESULTS=(); TIMES=(); NOTES=()
STAGE_START=0
begin() { STAGE_START=$(date +%s); echo "== $1 ($(elapsed) s of $BUDGET s used)"; }
end() {  # end NAME STATUS NOTE
    NAMES+=("$1"); RESULTS+=("$2"); TIMES+=("$(( $(date +%s) - STAGE_START ))"); NOTES+=("$3")
    echo "   $2 ${3:+- $3}"
}
# the last summary line of a pytest log ("3 passed, 2 skipped in 4.1s"), without the = padding
pytest_line() { grep -E "[0-9]+ (passed|failed|skipped|errors?|deselected)|no tests ran" "$1" | tail -n 1 | sed 's/=//g; s/^ *//; s/ *$//'; }
status_of() {  # status_of EXIT_CODE: pytest's and timeout's exit codes in words
    case "$1" in
        0) echo PASS ;;
        124|137) echo "FAIL(timeout)" ;;
        *) echo FAIL ;;
    esac
}

NO_GPU=0
if [ "$DRY" = 1 ]; then
    export CUDA_VISIBLE_DEVICES=  # the dry run's stages see no GPU, even on a machine that has one
elif ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
    NO_GPU=1; DRY=1; export CUDA_VISIBLE_DEVICES=
    echo "no CUDA device (or no torch) for $PY: every stage runs as a dry run, and the script exits non-zero"
fi

# ---- 1. install -------------------------------------------------------------------------
begin install
LOG=$OUT_DIR/install.log
if [ "$DRY" = 1 ]; then
    # resolve only: a dry run must not change the environment it checks
    "$PY" -m pip install --dry-run --no-deps --no-build-isolation -e . >"$LOG" 2>&1
    rc=$?; note="dry run: pip resolved the checkout, nothing installed"
else
    "$PY" -m pip install --no-deps --no-build-isolation -e . >"$LOG" 2>&1
    rc=$?; note="pip install -e . (no deps, no build isolation)"
fi
"$PY" -c "import effdrop_triton as ed; print('imported effdrop_triton', ed.__version__, 'from', ed.__file__)" >>"$LOG" 2>&1 \
    || { rc=1; note="$note; effdrop_triton does not import"; }
[ "$rc" = 0 ] || tail -n 5 "$LOG" | sed 's/^/   | /'
end install "$(status_of $rc)" "$note"

# ---- 2. versions ------------------------------------------------------------------------
begin versions
LOG=$OUT_DIR/versions.txt
{
    echo "date (UTC): $(date -u '+%Y-%m-%d %H:%M:%S')"
    if git rev-parse --short HEAD >/dev/null 2>&1; then
        echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (uncommitted changes)')"
    else
        echo "commit: unknown (no git checkout)"
    fi
    if command -v nvidia-smi >/dev/null 2>&1; then
        timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.memory --format=csv
        timeout 30 nvidia-smi
    else
        echo "nvidia-smi: not found (no NVIDIA driver on this machine)"
    fi
} >"$LOG" 2>&1
"$PY" - >>"$LOG" 2>&1 <<'EOF'
import platform
import re
import torch
try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = "not installed"
print(f"python {platform.python_version()}  torch {torch.__version__} (CUDA {torch.version.cuda})  triton {triton_version}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"cuda device: {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB")
    slug = re.sub(r"[^a-z0-9.]+", "-", p.name.lower().replace("nvidia", "")).strip("-")
    print(f"CUDA_AVAILABLE=1 DEVICE_SLUG={slug or 'cuda'}")
    print(f"DEVICE_NAME={p.name} (sm_{p.major}{p.minor})")
else:
    print("cuda device: none (torch.cuda.is_available() is False)")
    print("CUDA_AVAILABLE=0 DEVICE_SLUG=cpu")
    print("DEVICE_NAME=no CUDA device")
EOF
rc=$?
HAVE_CUDA=$(grep -o "CUDA_AVAILABLE=[01]" "$LOG" | tail -n 1 | cut -d= -f2)
SLUG=$(grep -o "DEVICE_SLUG=[A-Za-z0-9._-]*" "$LOG" | tail -n 1 | cut -d= -f2)
HAVE_CUDA=${HAVE_CUDA:-0}; SLUG=${SLUG:-unknown}
if [ "$DRY" = 1 ]; then SLUG=${SLUG}-dry-run; fi
grep -E "^(python|cuda device|NVIDIA|name,)|, [0-9.]+, " "$LOG" | head -n 4 | sed 's/^/   | /'
note=$(grep -E "^cuda device" "$LOG" | head -n 1)
end versions "$(status_of $rc)" "${note:-see versions.txt}"

# ---- 3. CUDA tests ----------------------------------------------------------------------
begin cuda-tests
LOG=$OUT_DIR/tests.log
TEST_LIMIT=$(max 30 "$(min $(( BUDGET * 2 / 5 )) $(( $(remaining) - 90 )))")
# the sm_90 compile checks (tests/test_kernels_compile.py) need no GPU: make test runs them under this
# machine's Triton release (3.6) on the CPU, so the GPU's time goes to what only it can run
TESTS=(tests/test_cuda.py)
# most of the suite's time is the CPU fallback it compares with: spread it over the cores (pytest-xdist)
WORKERS=()
if [ "$DRY" = 0 ] && "$PY" -c "import xdist" >/dev/null 2>&1; then
    WORKERS=(-n "$(min 16 "$(nproc)")")
fi
timeout -s INT -k 15 "$TEST_LIMIT" "$PY" -m pytest "${TESTS[@]}" "${WORKERS[@]}" -q -rfEs -p no:cacheprovider >"$LOG" 2>&1
rc=$?
note="${TESTS[*]}: $(pytest_line "$LOG")"
if [ "$rc" = 124 ]; then note="stopped at its ${TEST_LIMIT} s share of the budget; $note"; fi
if [ "$HAVE_CUDA" != 1 ]; then note="CUDA tests skipped: no GPU; $note"; fi
[ "$rc" = 0 ] || grep -E "^(FAILED|ERROR)" "$LOG" | head -n 5 | sed 's/^/   | /'
end cuda-tests "$(status_of $rc)" "$note"

# ---- 4. training steps (bf16) -----------------------------------------------------------
begin e2e
LOG=$OUT_DIR/bench.log
JSON=$OUT_DIR/$SLUG-$DATE.json
E2E_JSON=$(mktemp "${TMPDIR:-/tmp}/e2e-XXXXXX.json")
rm -f "$JSON"
E2E_BUDGET=$(max 20 $(( ($(remaining) - 40) / 2 )))
if [ "$DRY" = 1 ]; then
    E2E_GRID=(--bench-shapes=small --bench-dtypes=fp32 --benchmark-min-rounds=1 --benchmark-max-time=0)
    note="dry run: the CPU's fp32 steps, 1 round each; "
else
    E2E_GRID=(--bench-dtypes=bf16 --benchmark-min-rounds=5 --benchmark-max-time=1)
    note="bf16 autocast; "
fi
echo "---- bench/test_bench_e2e.py (training steps)" >"$LOG"
timeout -s INT -k 20 $(( E2E_BUDGET + 60 )) "$PY" -m pytest bench/test_bench_e2e.py -q -rs -p no:cacheprovider \
    "${E2E_GRID[@]}" "${GRAPHS[@]}" --bench-budget="$E2E_BUDGET" --bench-no-rounds --benchmark-json="$E2E_JSON" \
    --benchmark-columns=median,iqr,rounds >>"$LOG" 2>&1
rc=$?
note="$note$(pytest_line "$LOG")"
[ -s "$E2E_JSON" ] || { rc=1; note="$note; no JSON written"; }
[ "$rc" = 0 ] || grep -E "^(FAILED|ERROR)" "$LOG" | head -n 5 | sed 's/^/   | /'
end e2e "$(status_of $rc)" "$note"

# ---- 5. benchmarks ----------------------------------------------------------------------
begin benchmarks
{ echo; echo "---- the other benchmarks"; } >>"$LOG"
RESERVE=40  # report, summary and the benchmark session's start-up
BENCH_BUDGET=$(max 20 $(( $(remaining) - RESERVE )))
if [ "$DRY" = 1 ]; then
    # the pipeline once, not a measurement: CPU, small shape, fp32, fwd+bwd, one round
    GRID=(--bench-shapes=small --bench-dtypes=fp32 --bench-passes=fwdbwd --benchmark-min-rounds=1 --benchmark-max-time=0)
    note="dry run: CPU, small fp32 fwd+bwd, 1 round per case (no GPU numbers); "
else
    # about 350 cases; time each for budget/1000 s (0.2 s at the default), at least 5 rounds
    MAX_TIME=$("$PY" -c "print(min(1.0, max(0.05, $BENCH_BUDGET / 1000)))")
    GRID=(--bench-shapes=small,cifar,bn256,large --bench-priority --benchmark-min-rounds=5 --benchmark-max-time="$MAX_TIME")
    note="headline cases first, ${MAX_TIME} s per case; "
fi
STEPS_DONE=$([ "$DRY" = 1 ] && echo fp32 || echo bf16)  # the training steps stage 4 ran
timeout -s INT -k 20 $(( BENCH_BUDGET + 60 )) "$PY" -m pytest bench/test_bench_*.py -q -rs -p no:cacheprovider \
    -k "not (test_e2e_step and $STEPS_DONE)" "${GRID[@]}" "${GRAPHS[@]}" --bench-budget="$BENCH_BUDGET" \
    --bench-no-rounds --benchmark-json="$JSON" --benchmark-columns=median,iqr,rounds \
    >>"$LOG" 2>&1
rc=$?
OVER=$(grep -E "^SKIPPED \[[0-9]+\].*over the --bench-budget" "$LOG" | sed -E 's/^SKIPPED \[([0-9]+)\].*/\1/' \
       | awk '{n += $1} END {print n + 0}')
note="$note$(pytest_line "$LOG")"
[ "$OVER" = 0 ] || note="$note; $OVER over the ${BENCH_BUDGET} s budget"
[ -s "$JSON" ] || { rc=1; note="$note; no JSON written"; }
# one JSON file: the training steps' records join the others
"$PY" - "$E2E_JSON" "$JSON" >>"$LOG" 2>&1 <<'EOF'
import json, os, sys
steps, target = sys.argv[1:]
if os.path.getsize(steps):
    with open(steps) as f:
        merged = json.load(f)
    if os.path.exists(target) and os.path.getsize(target):
        with open(target) as f:
            merged["benchmarks"] += json.load(f)["benchmarks"]
    with open(target, "w") as f:
        json.dump(merged, f)
EOF
rm -f "$E2E_JSON"
[ "$rc" = 0 ] || grep -E "^(FAILED|ERROR)" "$LOG" | tail -n 5 | sed 's/^/   | /'
end benchmarks "$(status_of $rc)" "$note"

# ---- 6. report --------------------------------------------------------------------------
begin report
MD=$OUT_DIR/$SLUG-$DATE.md
{ echo; echo "---- python -m bench.report"; } >>"$LOG"
"$PY" -m bench.report "$JSON" --out "$MD" --plot "$OUT_DIR/$SLUG-$DATE.png" >>"$LOG" 2>&1
rc=$?
HEADLINE=$("$PY" -m bench.report "$JSON" --headline 2>/dev/null)
note="$(basename "$MD")"
[ -s "$OUT_DIR/$SLUG-$DATE.png" ] && note="$note, $SLUG-$DATE.png" || note="$note (chart skipped: see bench.log)"
end report "$(status_of $rc)" "$note"

# ---- summary ----------------------------------------------------------------------------
SUMMARY=$OUT_DIR/summary.txt
{
    echo
    echo "==== effdrop_triton GPU check: $(grep -E '^DEVICE_NAME=' "$OUT_DIR/versions.txt" | tail -n 1 | cut -d= -f2-) ===="
    grep -E "^python " "$OUT_DIR/versions.txt" | head -n 1
    [ "$DRY" = 1 ] && echo "DRY RUN: CUDA parts skipped$([ "$NO_GPU" = 1 ] && echo ' (no CUDA device found)')"
    printf '%-11s %-13s %6s  %s\n' stage status seconds note
    for i in "${!NAMES[@]}"; do
        printf '%-11s %-13s %6s  %s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${TIMES[$i]}" "${NOTES[$i]}"
    done
    echo "total $(elapsed) s of a $BUDGET s budget; files in $OUT_DIR"
    if [ -n "$HEADLINE" ]; then
        echo
        echo "Headline$([ "$DRY" = 1 ] && echo ' (DRY RUN: one CPU round per case, not a measurement)'):" \
            "speed-up = baseline time / this package's time, same run; > 1: faster"
        if grep -q "(graph)" <<<"$HEADLINE"; then
            echo "(graph): the same ratio of CUDA graph replay times (GPU time without the host's); ✗: capture failed"
        fi
        echo "$HEADLINE"
    fi
} | tee "$SUMMARY"

FAILED=0
for r in "${RESULTS[@]}"; do [ "$r" = PASS ] || FAILED=1; done
[ "$NO_GPU" = 1 ] && FAILED=1
exit $FAILED
