#!/usr/bin/env bash
# Builds, on a CPU machine, what scripts/gpu-check.sh runs on a GPU machine (which has no Rust toolchain
# and no network; see GPU.md in the project notes): release `imgtrain` and `imgtool`, stripped of debug
# info so that they travel light, in the git-ignored folder gpu-carry/.
#
# libtorch is not copied: the GPU machine has the same torch 2.11.0 (cu130) wheel, whose lib/ folder
# (libgomp included) gpu-check.sh puts on LD_LIBRARY_PATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
carry=${GPU_CARRY:-gpu-carry}

. scripts/libtorch-env.sh
echo "== building imgtrain and imgtool (release)"
cargo build --release --locked -p imgtrain -p imgtool

rm -rf "$carry"
mkdir -p "$carry"
for bin in imgtrain imgtool; do
    strip --strip-debug -o "$carry/$bin" "target/release/$bin"
done
# The binaries must need nothing beyond libtorch's folder and the C/C++ runtime.
if ldd "$carry/imgtrain" | grep -q 'not found'; then
    ldd "$carry/imgtrain" | grep 'not found' >&2
    echo "error: unresolved libraries (is libtorch's lib/ on the rpath?)" >&2
    exit 1
fi
readelf -d "$carry/imgtrain" | grep -q '\[libtorch_cuda.so\]' ||
    { echo "error: libtorch_cuda.so is not linked: CUDA would be unavailable" >&2; exit 1; }
git rev-parse HEAD >"$carry/COMMIT" 2>/dev/null || true
du -sh "$carry"
echo "== ready: run scripts/gpu-check.sh on the GPU machine with $carry/ beside it"
