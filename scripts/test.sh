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
# Clippy in the test profile: build scripts and proc macros are then shared with `cargo test` below
# instead of built and run twice (torch-sys's C++ wrapper, the trainer's C++ bridge and libjpeg-turbo's
# cmake build: ~8 of a fresh run's minutes on two cores, measured 2026-12-01).
echo "== cargo clippy (warnings denied)"
cargo clippy --workspace --all-targets --locked --profile test -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
# The workspace build turns on the loader's `turbojpeg` feature (the binaries want it); the loader must also
# build and lint clean on its own, pure Rust, as a library user without a C toolchain gets it: every target
# (tests, examples, benches) type-checked and linted. Running its tests too costs a fresh run ~8 minutes
# (the loader and its test binary built again with other dependency features), so that is the long form,
# `cargo test -p imgloader`, to run when a decoder or a feature gate changes (README, first section).
echo "== the loader without libjpeg-turbo (type-checked and linted)"
cargo clippy -p imgloader --all-targets --locked --profile test -- -D warnings
echo "== the loader's API docs (broken links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc -p imgloader --no-deps --locked --features turbojpeg
# The Python package: one wheel (release, libjpeg-turbo when cmake and nasm are here, as for the binaries)
# into the reference venv, then its tests, which compare its batches with the Rust loader's.
echo "== the Python package (python/): wheel + pytest"
if [[ -n "${IMG_PYTHON:-}" ]]; then
    MATURIN_PEP517_ARGS="--locked" "$IMG_PYTHON" -m pip install --disable-pip-version-check -q \
        --no-build-isolation --force-reinstall --no-deps ./python
    "$IMG_PYTHON" -m pytest python/tests -q -p no:cacheprovider
elif [[ -n "${CI:-}" ]]; then
    echo "IMG_PYTHON must be set when CI is set" >&2
    exit 1
else
    echo "skipped: IMG_PYTHON not set (LIBTORCH or LIBTORCH_USE_PYTORCH given)"
fi
