#!/usr/bin/env bash
# The GPU check of the trainer, run on a GPU machine from the repository root, with the binaries that
# scripts/gpu-build.sh put in gpu-carry/ (the machine has Python + torch 2.11.0+cu130 but no Rust):
#
#   1. device check (CUDA visible, cuDNN, a convolution forward and backward);
#   2. --dummy (synthetic batches made on the GPU, no decoding): resnet50 and resnet18, bf16 autocast +
#      channels_last (the defaults on CUDA), plus resnet50 in fp16 (loss scaler) and in fp32;
#   3. the distributed path on the one GPU: resnet50 --dummy through --multiprocessing-distributed with
#      one NCCL process (c10d's Reducer all-reducing every gradient bucket), its images/s against the plain
#      run's (goal: at least 98%);
#   4. real JPEGs: a generated photo-like corpus (~500x375, quality 90, what the loader benchmarks use),
#      trained from its tars with the loader on 16 threads: resnet50 and resnet18, reporting images/s and
#      the share of time the GPU waited for data.
#
# Epoch 0 of each run includes cuDNN's benchmark warm-up; read the images/s of the last epoch. Logs go to
# $OUT (the device tool's output folder) or gpu-out/.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
carry=${GPU_CARRY:-gpu-carry}
out=${OUT:-gpu-out}
work=${GPU_WORK:-/tmp/imgtrain-gpu-check}
threads=${GPU_THREADS:-16}
mkdir -p "$out" "$work"

[[ -x "$carry/imgtrain" ]] || { echo "error: $carry/imgtrain missing: run scripts/gpu-build.sh on a CPU machine first" >&2; exit 1; }
lib=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') ||
    { echo "error: python3 cannot import torch (its lib/ folder holds libtorch)" >&2; exit 1; }
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

status=0
# stderr lines a run may print without being wrong: none for imgtrain (libtorch warnings, such as the
# per-call deprecation of pin_memory(device), would flood an ImageNet epoch); imgtool's progress lines.
expected_stderr='^$'
step() {
    # step NAME COMMAND...: runs it, keeps its stdout and stderr, shows the lines that matter, and fails on
    # a non-zero exit or on any stderr line an imgtrain run did not expect.
    local name=$1
    shift
    echo "== $name: $*"
    local t0=$SECONDS
    "$@" >"$out/$name.log" 2>"$out/$name.err"
    local rc=$?
    grep -E '^(imgtrain|=> |Epoch: \[[0-9]+\] done| \* Acc|== summary|error)|images/s|per step' "$out/$name.log" | tail -n 12
    echo "-- $name: exit $rc in $((SECONDS - t0)) s"
    [[ $rc -eq 0 ]] || { status=1; tail -n 5 "$out/$name.err"; }
    if [[ $rc -eq 0 && "$(basename "$1")" == imgtrain ]] && grep -vqE "$expected_stderr" "$out/$name.err"; then
        echo "-- $name: unexpected stderr ($(grep -vcE "$expected_stderr" "$out/$name.err") lines), first ones:"
        grep -vE "$expected_stderr" "$out/$name.err" | head -n 5
        status=1
    fi
    # The last epoch's rate (the first includes cuDNN's benchmark warm-up).
    grep -E '^Epoch: \[[0-9]+\] done' "$out/$name.log" | tail -n 1 | grep -oE '[0-9.]+ images/s' |
        sed "s/^/-- $name: last epoch /"
}

{
    echo "commit: $(cat "$carry/COMMIT" 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: unavailable"
    echo "cpus: $(nproc)"
} | tee "$out/machine.txt"

step device "$carry/imgtrain"

# 30 steps of 256 a run and 2 epochs: the second is past cuDNN's warm-up.
dummy=(--dummy -b 256 --epochs 2 --limit-train $((256 * 30)) --limit-val 2560 -p 10 --seed 0)
step dummy-resnet50-bf16 "$carry/imgtrain" "${dummy[@]}" -a resnet50 --output_dir "$work/r50"
step dummy-resnet18-bf16 "$carry/imgtrain" "${dummy[@]}" -a resnet18 --output_dir "$work/r18"
step dummy-resnet50-fp16 "$carry/imgtrain" "${dummy[@]}" -a resnet50 --amp fp16 --output_dir "$work/r50h"
step dummy-resnet50-fp32 "$carry/imgtrain" "${dummy[@]}" -a resnet50 --amp off --output_dir "$work/r50f"
step dummy-resnet50-nccl1 "$carry/imgtrain" "${dummy[@]}" -a resnet50 --multiprocessing-distributed \
    --nproc-per-node 1 --dist-backend nccl --output_dir "$work/r50d"
last_rate() { grep -E '^Epoch: \[[0-9]+\] done' "$out/$1.log" | tail -n 1 | grep -oE '[0-9.]+ images/s' | cut -d' ' -f1; }
plain=$(last_rate dummy-resnet50-bf16)
nccl=$(last_rate dummy-resnet50-nccl1)
if [[ -n "$plain" && -n "$nccl" ]]; then
    awk -v p="$plain" -v d="$nccl" 'BEGIN { printf "-- NCCL world size 1 vs plain: %.1f vs %.1f images/s = %.1f%% (goal >= 98%%)\n", d, p, 100 * d / p }'
fi

data="$work/corpus"
if [[ ! -f "$data/val.tar" ]]; then
    step synth "$carry/imgtool" synth --out "$data" --style realistic --classes 100 --train-per-class 200 \
        --val-per-class 10 --seed 0 --force
fi
step index-train "$carry/imgtool" index "$data/train.tar"
step index-val "$carry/imgtool" index "$data/val.tar"
# imgtrain reads train.tar and val.tar (a tar wins over the folder of the same split).
real=(-j "$threads" -b 256 --epochs 2 -p 20 --seed 0)
step jpeg-resnet50 "$carry/imgtrain" "$data" "${real[@]}" -a resnet50 --output_dir "$work/j50"
step jpeg-resnet18 "$carry/imgtrain" "$data" "${real[@]}" -a resnet18 --output_dir "$work/j18"

echo "== done (exit $status); logs in $out/"
exit $status
