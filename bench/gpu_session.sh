#!/usr/bin/env bash
# Everything a session with a lent GPU owes, in one command of at most 7 minutes:
#
#   bash bench/gpu_session.sh          (device tool: `run`, timeout_s=420, carry nothing)
#
# Phases, in order, each under its own `timeout` (seconds, overridable):
#   1. tests      the GPU tests (`pytest -m gpu`), one 4097x2049 case per kernel family
#                 (GBP_T_TESTS, default 170)
#   2. bench      `python -m gpubackprop bench --quick`: every network and contender,
#                 short repetitions; JSON + PNG (GBP_T_BENCH, default 120)
#   3. memcheck   compute-sanitizer memcheck on the small kernel cases, CuPy's memory
#   4. racecheck  pool off (cupy.cuda.set_allocator(None)) so that an out-of-bounds
#                 access is not hidden inside a pooled block (GBP_T_SANITIZER each,
#                 default 45)
# Budget: 170 + 120 + 2 x 45 = 380 s, plus a few seconds of probing. Expected on an H200
# (from the CPU-side dry run, 2026-11-30): tests 70-100 s (664 GPU tests, 101 of them
# for LayerNorm, Dropout, Embedding, LSTM, GRU, RNN, mostly small; a cold NVRTC compile
# of nine modules, 25-40 s; the NumPy references of the large cases, ~60 s on this
# 2-core machine under load, a third of that on the GPU host); bench 60-90 s (every
# network and contender at --quick); each sanitizer phase 25-40 s (139 float32 kernel
# cases: 126 of dense/losses/optim at 1x1 and 7x13, 4 of norm.cu/dropout.cu, 9 of
# recurrent.cu; kernels already compiled and cached on disk by the tests phase).
#
# Every phase writes its log with `tee` into $OUT (the device tool's folder; here
# bench/results/session-<time>/), so a phase killed by its timeout still returns
# what it printed. $OUT/summary.txt gets one line per phase (exit status, seconds,
# pass/fail counts), the machine, and the benchmark table; the benchmark's JSON and
# PNG are copied to $OUT. At most 8 files come back from the device tool: this
# script writes 7. Exit status: 0 only if every phase passed.
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-bench/results/session-$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$OUT"
summary="$OUT/summary.txt"
: >"$summary"
session_start=$(date +%s)
failed=0

note() { echo "$*" | tee -a "$summary"; }

# phase NAME LIMIT_S COMMAND...: run under timeout, log to $OUT/NAME.log, one summary line
phase() {
    local name=$1 limit=$2 start rc status
    shift 2
    start=$(date +%s)
    echo "=== $name (limit ${limit} s): $*"
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) status=passed ;;
        124 | 137) status="TIMED OUT" ;;
        *) status="FAILED (exit $rc)" ;;
    esac
    [ "$rc" -eq 0 ] || failed=1
    note "$(printf '%-10s %-18s %4d s  %s' "$name" "$status" $(($(date +%s) - start)) \
        "$(counts "$OUT/$name.log")")"
}

# the pytest closing line or compute-sanitizer's error summary of a log
counts() {
    grep -E "^(=+ )?[0-9]+ (passed|failed|error|skipped)|ERROR SUMMARY|no tests ran" "$1" \
        | tail -n 2 | tr '\n' ' '
}

note "gpu_session.sh on $(hostname) at $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
note "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'none visible (nvidia-smi)')"
note "$("$PY" - <<'EOF' 2>&1
import platform
import numpy
try:
    import cupy
    cp = f"CuPy {cupy.__version__}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}"
except Exception as exc:  # noqa: BLE001 - report whatever stops CuPy
    cp = f"CuPy not usable: {exc}"
print(f"Python {platform.python_version()}, NumPy {numpy.__version__}, {cp}")
EOF
)"

# 1. the GPU tests (the slowest ten are listed, to keep this phase inside its budget)
phase tests "${GBP_T_TESTS:-170}" \
    "$PY" -m pytest -q -p no:cacheprovider -m gpu --durations=10 tests

# 2. the benchmark: every network and contender, short repetitions
bench_start=$(date +%s)
phase bench "${GBP_T_BENCH:-120}" "$PY" -m gpubackprop bench --quick
for ext in json png; do
    newest=$(find bench/results -maxdepth 1 -name "gpu_step_*.$ext" -newermt "@$bench_start" \
        2>/dev/null | sort | tail -n 1)
    [ -n "$newest" ] && cp "$newest" "$OUT/"
done

# 3./4. compute-sanitizer over the small kernel cases, with CuPy's memory pool off
# (pytest's argument file bench/sanitize_cases.txt: every kernel family, dense/losses/
# optim, norm.cu and dropout.cu at 1x1 and 7x13 (shape0, shape1), recurrent.cu's four
# cells at 1x1 and 3x7; float32 only; tests/test_gpu_session.py checks the selection)
sanitize_subset=(-q -p no:cacheprovider @bench/sanitize_cases.txt)
if command -v compute-sanitizer >/dev/null 2>&1; then
    for tool in memcheck racecheck; do
        phase "$tool" "${GBP_T_SANITIZER:-45}" \
            compute-sanitizer --tool "$tool" --error-exitcode 99 --print-limit 20 \
            "$PY" -c 'import sys, cupy, pytest
cupy.cuda.set_allocator(None)  # no pool: every buffer is its own allocation
sys.exit(pytest.main(sys.argv[1:]))' "${sanitize_subset[@]}"
    done
else
    note "memcheck   SKIPPED: compute-sanitizer not found"
    note "racecheck  SKIPPED: compute-sanitizer not found"
    failed=1
fi

note "total      $(($(date +%s) - session_start)) s"
{
    echo
    echo "--- benchmark table (end of bench.log) ---"
    tail -n 45 "$OUT/bench.log"
} >>"$summary"
exit "$failed"
