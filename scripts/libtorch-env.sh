# shellcheck shell=bash
# Source this file (`. scripts/libtorch-env.sh`) to make sure libtorch 2.11.0 is available and to export
# what tch's build (torch-sys) needs to find it. Idempotent: a second run only checks.
#
# Order of preference:
#   1. LIBTORCH=/path/to/libtorch set by the user: used as is (version checked when it says).
#   2. LIBTORCH_USE_PYTORCH=1 set by the user: their `python3` must import torch 2.11.0.
#   3. Otherwise: PyPI's torch==2.11.0 (+ the CUDA headers the c10d/NCCL shim needs) in a per-user cache
#      outside the checkout, keyed by version, shared by every clone and CI run of this machine.
#
# It also makes sure Debian's libgloo-dev (headers for the CPU distributed backend) is present, a C++ compiler
# (the trainer's bridge to libtorch), and cmake
# and NASM, which build the bundled libjpeg-turbo (the binaries' default `turbojpeg` feature).

IMG_TORCH_VERSION="2.11.0"
IMG_CUDA_HEADERS_VERSION="13.0.*"
IMG_TORCHVISION_VERSION="0.26.0"
IMG_TENSORBOARD_VERSION="2.21.0"
IMG_WANDB_VERSION="0.31.0"
IMG_MATURIN_VERSION="1.16.0"
IMG_PYTEST_VERSION="9.2.0"

_img_say() { printf '[libtorch] %s\n' "$*" >&2; }
_img_die() {
    printf '[libtorch] error: %s\n' "$*" >&2
    return 1
}

_img_check_python_torch() {
    # $1: python executable. Prints torch's lib dir on success.
    local py="$1" found
    found=$("$py" -c 'import torch, os; print(torch.__version__); print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null) ||
        return 1
    local version=${found%%$'\n'*}
    if [[ "${version%%+*}" != "$IMG_TORCH_VERSION" ]]; then
        _img_die "$py has torch $version, but this project needs torch $IMG_TORCH_VERSION (tch 0.24.0)"
        return 2
    fi
    printf '%s\n' "${found#*$'\n'}"
}

_img_ensure_gloo() {
    [[ -f /usr/include/gloo/config.h ]] && return 0
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        _img_say "installing Debian's libgloo-dev (Gloo headers for the CPU distributed backend)"
        if ! { apt-get install -y -q libgloo-dev >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libgloo-dev >/dev/null 2>&1; }; }; then
            _img_say "warning: could not install libgloo-dev; distributed training on CPU will be unavailable"
        fi
    else
        _img_say "note: libgloo-dev is not installed (run: sudo apt-get install libgloo-dev)"
    fi
    return 0
}

_img_ensure_cxx() {
    # The trainer's C++ bridge to libtorch (trainer/cpp/bridge.cpp) needs a C++17 compiler.
    command -v c++ >/dev/null && return 0
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        _img_say "installing Debian's g++ (it compiles the trainer's C++ bridge to libtorch)"
        { apt-get install -y -q g++ >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q g++ >/dev/null 2>&1; }; } ||
            { _img_die "could not install g++ with apt-get"; return 1; }
    else
        _img_die "a C++ compiler is needed for the trainer's bridge to libtorch (e.g. sudo apt-get install g++)"
    fi
}

_img_ensure_jpeg_tools() {
    command -v cmake >/dev/null && command -v nasm >/dev/null && return 0
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        _img_say "installing Debian's cmake and nasm (they build the bundled libjpeg-turbo)"
        { apt-get install -y -q cmake nasm >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q cmake nasm >/dev/null 2>&1; }; } ||
            { _img_die "could not install cmake and nasm with apt-get"; return 1; }
    else
        _img_die "cmake and nasm are needed to build libjpeg-turbo (e.g. sudo apt-get install cmake nasm), or build \
with --no-default-features for the pure-Rust decoder only"
        return 1
    fi
}

_img_ensure_libtorch() {
    if [[ -n "${LIBTORCH:-}" ]]; then
        [[ -f "$LIBTORCH/lib/libtorch_cpu.so" ]] ||
            { _img_die "LIBTORCH=$LIBTORCH does not contain lib/libtorch_cpu.so"; return 1; }
        if [[ -f "$LIBTORCH/build-version" ]]; then
            local v
            v=$(<"$LIBTORCH/build-version")
            [[ "${v%%+*}" == "$IMG_TORCH_VERSION" ]] ||
                { _img_die "LIBTORCH=$LIBTORCH is version $v, this project needs $IMG_TORCH_VERSION"; return 1; }
        fi
        _img_say "using LIBTORCH=$LIBTORCH"
        export IMG_LIBTORCH_LIB="$LIBTORCH/lib"
        return 0
    fi

    if [[ -n "${LIBTORCH_USE_PYTORCH:-}" ]]; then
        local lib
        command -v python3 >/dev/null || { _img_die "LIBTORCH_USE_PYTORCH is set but python3 is not on PATH"; return 1; }
        lib=$(_img_check_python_torch python3) ||
            { _img_die "LIBTORCH_USE_PYTORCH is set but $(command -v python3) cannot import torch $IMG_TORCH_VERSION"; return 1; }
        _img_say "using the torch of $(command -v python3) ($lib)"
        export IMG_LIBTORCH_LIB="$lib"
        return 0
    fi

    local cache="${IMG_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/imgtoolkit}"
    local py_tag venv lib
    command -v python3 >/dev/null ||
        { _img_die "python3 is needed to install libtorch (PyPI torch==$IMG_TORCH_VERSION); install Python 3.10-3.13 or set LIBTORCH"; return 1; }
    py_tag=$(python3 -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")') ||
        { _img_die "python3 does not run"; return 1; }
    venv="$cache/torch-$IMG_TORCH_VERSION-$py_tag"

    if [[ ! -f "$venv/.complete" ]]; then
        python3 -m pip --version >/dev/null 2>&1 ||
            { _img_die "pip is missing for $(command -v python3); install it (e.g. apt-get install python3-pip) or set LIBTORCH"; return 1; }
        python3 -c 'import venv' 2>/dev/null ||
            { _img_die "the Python venv module is missing (e.g. apt-get install python3-venv)"; return 1; }
        _img_say "installing PyPI torch==$IMG_TORCH_VERSION into $venv"
        _img_say "(first time only: ~4.6 GB download, about a minute on a fast link; reused by later clones)"
        rm -rf "$venv"
        mkdir -p "$cache"
        python3 -m venv "$venv" || { _img_die "could not create a venv at $venv"; return 1; }
        "$venv/bin/python" -m pip install --disable-pip-version-check -q \
            "torch==$IMG_TORCH_VERSION" \
            "nvidia-cuda-crt==$IMG_CUDA_HEADERS_VERSION" "nvidia-cuda-cccl==$IMG_CUDA_HEADERS_VERSION" ||
            { _img_die "pip install torch==$IMG_TORCH_VERSION failed (see above)"; return 1; }
        touch "$venv/.complete"
    fi
    lib=$(_img_check_python_torch "$venv/bin/python") ||
        { _img_die "the cached install at $venv is broken; delete it and rerun"; return 1; }
    # The reference implementations the tests compare against (PIL decode, torchvision transforms and
    # models), in the same cache so later runs reuse them.
    if [[ ! -f "$venv/.reference-complete" ]]; then
        _img_say "installing the test references (torchvision==$IMG_TORCHVISION_VERSION, pillow) into $venv"
        "$venv/bin/python" -m pip install --disable-pip-version-check -q \
            "torchvision==$IMG_TORCHVISION_VERSION" pillow "torch==$IMG_TORCH_VERSION" ||
            { _img_die "pip install torchvision==$IMG_TORCHVISION_VERSION failed (see above)"; return 1; }
        touch "$venv/.reference-complete"
    fi
    # What the metrics tests read a run's records back with: TensorBoard's event reader and the wandb
    # package (offline runs). Pinned, like the references, so a fresh machine gets what the tests met.
    if [[ ! -f "$venv/.observability-complete" ]]; then
        _img_say "installing tensorboard==$IMG_TENSORBOARD_VERSION and wandb==$IMG_WANDB_VERSION into $venv"
        "$venv/bin/python" -m pip install --disable-pip-version-check -q \
            "tensorboard==$IMG_TENSORBOARD_VERSION" "wandb==$IMG_WANDB_VERSION" "torch==$IMG_TORCH_VERSION" ||
            { _img_die "pip install tensorboard wandb failed (see above)"; return 1; }
        touch "$venv/.observability-complete"
    fi
    # What builds and tests the Python package (python/): maturin as its build backend, pytest.
    if [[ ! -f "$venv/.python-package-complete" ]]; then
        _img_say "installing maturin==$IMG_MATURIN_VERSION and pytest==$IMG_PYTEST_VERSION into $venv"
        "$venv/bin/python" -m pip install --disable-pip-version-check -q \
            "maturin==$IMG_MATURIN_VERSION" "pytest==$IMG_PYTEST_VERSION" ||
            { _img_die "pip install maturin pytest failed (see above)"; return 1; }
        touch "$venv/.python-package-complete"
    fi
    # Tests that cross-check against PIL/torchvision run this interpreter.
    export IMG_PYTHON="$venv/bin/python"
    _img_say "using cached torch $IMG_TORCH_VERSION at $venv"
    export LIBTORCH_USE_PYTORCH=1
    export PATH="$venv/bin:$PATH"
    export IMG_LIBTORCH_LIB="$lib"
}

_img_ensure_libtorch && _img_ensure_gloo && _img_ensure_cxx && _img_ensure_jpeg_tools
