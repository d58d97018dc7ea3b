#!/usr/bin/env bash
# Compile every CUDA source in kernels/ with nvcc (no GPU needed), so a typo or a
# type error fails here and in CI instead of at NVRTC time on a GPU machine.
#
#  1. each kernels/*.cu with -DGBP_INSTANTIATE (every kernel for float and double
#     and every activation) for sm_90 and a generic sm_80, warnings as errors;
#  2. if Python can import gpubackprop: the sources exactly as the loader
#     (gpubackprop/kernels.py) hands them to NVRTC, with the loader's own
#     name_expressions, one translation unit per family (sm_90).
#
# All compiles run in parallel; objects go to a temporary folder under /tmp that
# is removed at the end. Exits non-zero on any error and prints what it compiled.
# Environment: NVCC (default: nvcc on PATH), PYTHON (default: python3),
# GBP_CHECK_JOBS (parallel jobs, default: number of CPUs).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
NVCC="${NVCC:-nvcc}"
PYTHON="${PYTHON:-python3}"
jobs="${GBP_CHECK_JOBS:-$(nproc 2>/dev/null || echo 2)}"

if ! command -v "$NVCC" >/dev/null 2>&1; then
    echo "check.sh: nvcc not found (set NVCC=/path/to/nvcc)" >&2
    exit 2
fi
out="$(mktemp -d /tmp/gbp-kernels-check.XXXXXX)"
trap 'rm -rf "$out"' EXIT

flags=(-std=c++17 -Werror all-warnings -Xcompiler -Wall,-Wextra -I "$here")
archs=(-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90)

# job list: "label|command..." (one per line), run with at most $jobs in parallel
cmds=()
shopt -s nullglob
sources=("$here"/*.cu)
if [ "${#sources[@]}" -eq 0 ]; then
    echo "check.sh: no .cu files in $here" >&2
    exit 2
fi
for src in "${sources[@]}"; do
    name="$(basename "$src" .cu)"
    cmds+=("$name.cu [float,double; sm_80,sm_90]|$NVCC ${flags[*]} ${archs[*]} -DGBP_INSTANTIATE -c $src -o $out/$name.o")
done

# 2. the loader's sources and name expressions, if the package imports here
# (run from $repo so that this checkout's gpubackprop is the one imported)
if (cd "$repo" && PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -c \
    "import sys; from gpubackprop.kernels import write_instantiation_sources as w; \
     print('\n'.join(str(p) for p in w(sys.argv[1])))" "$out") >"$out/loader.list" 2>"$out/loader.err"; then
    while read -r src; do
        name="$(basename "$src" .cu)"
        cmds+=("${name#loader_} as gpubackprop.kernels loads it [name_expressions; float,double; sm_90]|$NVCC ${flags[*]} -arch=sm_90 -c $src -o $out/$name.o")
    done <"$out/loader.list"
else
    echo "check.sh: skipping the loader check: gpubackprop.kernels does not import with $PYTHON:"
    cat "$out/loader.err"
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
