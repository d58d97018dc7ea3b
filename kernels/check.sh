#!/usr/bin/env bash
# Compile every CUDA kernel with nvcc (no GPU needed), so a typo or a type error
# fails here and in CI instead of at NVRTC time on a GPU machine.
#
# What is compiled is what the loader (gpubackprop/kernels.py) hands NVRTC: each
# family's source with its headers inlined, plus every name expression of the
# loader's table (every kernel for float and double, and every activation),
# written by gpubackprop.kernels.write_instantiation_sources. That table is the one
# list of instantiations. Each family for sm_80 and sm_90, warnings as errors.
#
# All compiles run in parallel; objects go to a temporary folder under /tmp that
# is removed at the end. Exits non-zero on any error, and when gpubackprop.kernels
# does not import with $PYTHON (then nothing could be checked). Environment: NVCC
# (default: nvcc on PATH), PYTHON (the interpreter that has gpubackprop's
# dependencies; tests pass their own; default: python3), GBP_CHECK_JOBS (parallel
# jobs, default: number of CPUs).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
NVCC="${NVCC:-nvcc}"
PYTHON="${PYTHON:-python3}"
jobs="${GBP_CHECK_JOBS:-$(nproc 2>/dev/null || echo 2)}"

if ! command -v "$NVCC" >/dev/null 2>&1; then
    echo "check.sh: FAILED: nvcc not found (set NVCC=/path/to/nvcc)" >&2
    exit 2
fi
out="$(mktemp -d /tmp/gbp-kernels-check.XXXXXX)"
trap 'rm -rf "$out"' EXIT

# the loader's sources and name expressions (run from $repo so that this
# checkout's gpubackprop is the one imported)
if ! (cd "$repo" && PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -c \
    "import sys; from gpubackprop.kernels import write_instantiation_sources as w; \
     print('\n'.join(str(p) for p in w(sys.argv[1])))" "$out") >"$out/sources.list" 2>"$out/sources.err"; then
    cat "$out/sources.err" >&2
    echo "check.sh: FAILED: gpubackprop.kernels does not import with PYTHON=$PYTHON (pass the interpreter that has its dependencies)" >&2
    exit 2
fi

flags=(-std=c++17 -Werror all-warnings -Xcompiler -Wall,-Wextra)
# job list: "label|command..." (one per line), run with at most $jobs in parallel
cmds=()
while read -r src; do
    name="$(basename "$src" .cu)"
    for sm in 80 90; do
        cmds+=("$name [the loader's name expressions; sm_$sm]|$NVCC ${flags[*]} -arch=sm_$sm -c $src -o $out/$name.$sm.o")
    done
done <"$out/sources.list"
if [ "${#cmds[@]}" -eq 0 ]; then
    echo "check.sh: FAILED: the loader wrote no sources" >&2
    exit 2
fi

start=$(date +%s)
pids=()
labels=()
logs=()
status=0
run_one() {  # label, command
    local log="$out/log.$RANDOM$RANDOM"
    # shellcheck disable=SC2086
    (eval "$2") >"$log" 2>&1 &
    pids+=("$!")
    labels+=("$1")
    logs+=("$log")
}
wait_one() {  # wait for the oldest job and report it
    local pid="${pids[0]}" label="${labels[0]}" log="${logs[0]}"
    pids=("${pids[@]:1}")
    labels=("${labels[@]:1}")
    logs=("${logs[@]:1}")
    if wait "$pid"; then
        echo "ok    $label"
    else
        echo "FAIL  $label"
        cat "$log"
        status=1
    fi
}
for entry in "${cmds[@]}"; do
    while [ "${#pids[@]}" -ge "$jobs" ]; do wait_one; done
    run_one "${entry%%|*}" "${entry#*|}"
done
while [ "${#pids[@]}" -gt 0 ]; do wait_one; done

echo "check.sh: ${#cmds[@]} compiles with $("$NVCC" --version | tail -n 1) in $(($(date +%s) - start)) s: $([ "$status" -eq 0 ] && echo passed || echo FAILED)"
exit "$status"
