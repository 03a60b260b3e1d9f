#!/usr/bin/env bash
# Every check the project has: formatting, lints (warnings are errors), and all tests of all crates.
# This is the README's test command and exactly what CI (.ci/run) runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# libtorch 2.11.0 for the trainer (installed once into a per-user cache), and the PIL/torchvision
# references that the loader's parity tests compare against.
. scripts/libtorch-env.sh

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy (warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
# The workspace build turns on the loader's `turbojpeg` feature (the binaries want it); the loader must also
# build, lint clean and pass on its own, pure Rust, as a library user without a C toolchain gets it.
echo "== the loader without libjpeg-turbo"
cargo clippy -p imgloader --all-targets --locked -- -D warnings
cargo test -p imgloader --locked
echo "== the loader's API docs (broken links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc -p imgloader --no-deps --locked --features turbojpeg
