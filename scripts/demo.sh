#!/usr/bin/env bash
# The README's main command: build the tools, generate the built-in learnable demo dataset (class folders
# and train.tar/val.tar), index the tars in place, run the loader over them as training and validation
# would, and check that libtorch and the device work for imgtrain.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${DEMO_DIR:-demo-data}

. scripts/libtorch-env.sh
echo "== building (release)"
cargo build --release --locked -p imgtool -p imgtrain

echo "== generating the demo dataset into $out/"
target/release/imgtool synth --out "$out" --classes 10 --train-per-class 60 --val-per-class 20 --seed 0 --force

echo "== indexing the tars in place"
target/release/imgtool index "$out/train.tar"
target/release/imgtool index "$out/val.tar"

echo "== loading: train pipeline (RandomResizedCrop 224 + flip) from train.tar"
target/release/imgtool bench "$out/train.tar" --pipeline train --batch-size 32 --epochs 2
echo "== loading: val pipeline (resize 256 + centre crop 224) from the val/ folders"
target/release/imgtool bench "$out/val" --pipeline val --batch-size 32

echo "== the trainer's device"
target/release/imgtrain
