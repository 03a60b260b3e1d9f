#!/usr/bin/env bash
# The README's main command: build, generate the built-in learnable demo dataset (10 classes, 600 training
# and 200 validation JPEGs, as class folders and as train.tar/val.tar), index the tars in place, and train
# resnet18 on it from the tars, through the loader, on the CPU: a few minutes on two cores, ending with a
# validation top-1 far above chance (10%), a checkpoint in demo-run/ and a summary.
#
# DEMO_DIR (default demo-data) and DEMO_RUN (default demo-run) move the data and the checkpoints;
# DEMO_EPOCHS (default 16) shortens or lengthens the run. It ends with a chart of the run, $DEMO_RUN/curves.png
# (the one in the README's metrics section, docs/demo-run.png, was made this way).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
data=${DEMO_DIR:-demo-data}
run=${DEMO_RUN:-demo-run}
epochs=${DEMO_EPOCHS:-16}
# Cargo's own variable: a build folder elsewhere (a worktree's, CI's) is where the binaries are.
bin=${CARGO_TARGET_DIR:-target}/release

. scripts/libtorch-env.sh
echo "== building (release)"
cargo build --release --locked -p imgtool -p imgtrain

echo "== generating the demo dataset into $data/"
"$bin"/imgtool synth --out "$data" --classes 10 --train-per-class 60 --val-per-class 20 --seed 0 --force

echo "== indexing the tars in place"
"$bin"/imgtool index "$data/train.tar"
"$bin"/imgtool index "$data/val.tar"

echo "== training resnet18 on the CPU: $epochs epochs of 600 images, 48x48 crops, cosine LR with warm-up"
# Small crops keep a CPU epoch short; the recipe is main.py's SGD (momentum 0.9, weight decay 1e-4) with
# a cosine schedule, one warm-up epoch and label smoothing, which suit a short run from scratch.
"$bin"/imgtrain "$data" --arch resnet18 --epochs "$epochs" -b 32 -j 2 \
    --crop-size 48 --val-resize 55 --lr 0.1 --lr-schedule cosine --warmup-epochs 1 --label-smoothing 0.1 \
    --seed 0 --print-freq 10 --output_dir "$run"

echo "== evaluating the best checkpoint again, on its own"
"$bin"/imgtrain "$data" --arch resnet18 -b 32 -j 2 --crop-size 48 --val-resize 55 \
    --evaluate --resume "$run/model_best.safetensors" --print-freq 100 | tail -n 3

echo "== charting the run: loss, top-1, top-5, learning rate and images/s per epoch"
"$bin"/imgtool plot "$run" --out "$run/curves.png"
