#!/usr/bin/env bash
# Compile every CUDA kernel with nvcc (no GPU needed), so a typo or a type error
# fails here and in CI instead of at NVRTC time on a GPU machine: what the loader
# hands NVRTC (gpubackprop.kernels.write_instantiation_sources: each family with its
# headers inlined and every name expression of the loader's table), for sm_80 and
# sm_90, warnings as errors, in parallel, in a temporary folder (kernels/README.md).
# Exits non-zero on any error, and when gpubackprop.kernels does not import with
# $PYTHON (then nothing could be checked). Environment: NVCC (default: nvcc on PATH),
# PYTHON (the interpreter with gpubackprop's dependencies; default: python3),
# GBP_CHECK_JOBS (parallel compiles, default: number of CPUs).
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

# one compile (source, sm), reported as one block of output; run by xargs, up to $jobs at once
compile_one() {
    local name label
    name="$(basename "$1" .cu)"
    label="$name [the loader's name expressions; sm_$2]"
    if "$NVCC" -std=c++17 -Werror all-warnings -Xcompiler -Wall,-Wextra -arch="sm_$2" \
        -c "$1" -o "$out/$name.$2.o" >"$out/$name.$2.log" 2>&1; then
        echo "ok    $label"
    else
        printf 'FAIL  %s\n%s\n' "$label" "$(cat "$out/$name.$2.log")"  # one write: no interleaving
        return 1
    fi
}
export -f compile_one
export NVCC out

count=$((2 * $(wc -l <"$out/sources.list")))
if [ "$count" -eq 0 ]; then
    echo "check.sh: FAILED: the loader wrote no sources" >&2
    exit 2
fi
start=$(date +%s)
status=0
while read -r src; do printf '%s 80\n%s 90\n' "$src" "$src"; done <"$out/sources.list" |
    xargs -P "$jobs" -n 2 bash -c 'compile_one "$@"' _ || status=1

echo "check.sh: $count compiles with $("$NVCC" --version | tail -n 1) in $(($(date +%s) - start)) s: $([ "$status" -eq 0 ] && echo passed || echo FAILED)"
exit "$status"
