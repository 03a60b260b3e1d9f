"""PEP 517 backend: maturin's, plus one decision maturin cannot make by itself.

libjpeg-turbo (the loader's `turbojpeg` feature: region decode, PIL's very pixels) is compiled from source
and needs cmake and nasm. When both are on PATH the wheel gets it; otherwise it is pure Rust (zune-jpeg).
IMGLOADER_TURBOJPEG=0 or 1 overrides the guess. `imgloader.build_info()` tells which one a wheel has.
"""

import os
import shutil

from maturin import *  # noqa: F401,F403  (the hooks pip may ask for: prepare_metadata_..., build_sdist)
from maturin import build_editable as _build_editable
from maturin import build_wheel as _build_wheel


def _want_turbojpeg():
    forced = os.environ.get("IMGLOADER_TURBOJPEG")
    if forced is not None:
        return forced not in ("", "0", "no", "false")
    return shutil.which("cmake") is not None and shutil.which("nasm") is not None


def _with_features():
    if _want_turbojpeg():
        args = os.environ.get("MATURIN_PEP517_ARGS", "")
        if "turbojpeg" not in args:
            os.environ["MATURIN_PEP517_ARGS"] = (args + " --features turbojpeg").strip()


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _with_features()
    return _build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _with_features()
    return _build_editable(wheel_directory, config_settings, metadata_directory)
