"""Fixtures: a tiny dataset made with Pillow (class folders and the same files as a tar), and the Rust
loader's own batches for it (loader/examples/dump_batch.rs), built with the decoder this wheel has."""

import json
import os
import random
import subprocess
import tarfile

import numpy as np
import pytest
from PIL import Image

import imgloader

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASSES = ["ant", "bee", "cat"]
PER_CLASS = 7  # 21 samples: batches of 4 leave a short last one, and 2 ranks pad by one


def _photo(rng, w, h):
    """Smooth gradients plus noise: JPEG-friendly, and different at every crop."""
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    base = np.concatenate([x * rng.random() + y * rng.random(), (x + y) / 2, 1 - x * y], axis=2)
    noise = np.asarray(rng.random((h, w, 3))) * 0.3
    return Image.fromarray(((base * 0.7 + noise) * 255).clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """`root/train/<class>/*.JPEG` and `root/train.tar` with the same members."""
    root = tmp_path_factory.mktemp("data")
    gen = np.random.default_rng(0)
    rnd = random.Random(0)
    for c in CLASSES:
        os.makedirs(root / "train" / c)
        for k in range(PER_CLASS):
            img = _photo(gen, rnd.randint(60, 140), rnd.randint(60, 140))
            img.save(root / "train" / c / f"{c}_{k}.JPEG", quality=90)
    with tarfile.open(root / "train.tar", "w") as tar:
        for c in CLASSES:
            for k in range(PER_CLASS):
                tar.add(root / "train" / c / f"{c}_{k}.JPEG", arcname=f"{c}/{c}_{k}.JPEG")
    return root


@pytest.fixture(scope="session")
def rust_dump(tmp_path_factory):
    """A function (path, **settings) -> (pixels per batch, meta per batch) from the Rust loader."""
    features = ["--features", "turbojpeg"] if imgloader.build_info()["turbojpeg"] else []
    # The dev profile: `cargo test` (scripts/test.sh, before this) has built the loader and its
    # dependencies there already, so this only links the example; a release build would compile the
    # loader's dev-dependencies again (minutes). Pixels do not depend on the optimisation level (no
    # fast-math in Rust; the dependencies are optimised in both).
    cmd = ["cargo", "build", "--quiet", "--locked", "-p", "imgloader", "--example", "dump_batch"]
    cmd += features
    subprocess.run(cmd, cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    exe = os.path.join(target, "debug", "examples", "dump_batch")
    out_dir = tmp_path_factory.mktemp("rust")

    def dump(path, crop=32, **settings):
        out = str(out_dir / f"dump-{len(os.listdir(out_dir))}")
        args = [f"{k}={v}" for k, v in dict(settings, crop=crop).items()]
        subprocess.run([exe, str(path), out] + args, check=True)
        with open(out + ".json") as f:
            meta = json.load(f)["batches"]
        raw = np.fromfile(out, dtype=np.uint8)
        pixels, at = [], 0
        for b in meta:
            n = b["len"] * crop * crop * 3
            pixels.append(raw[at:at + n].reshape(b["len"], crop, crop, 3))
            at += n
        assert at == raw.size
        return pixels, meta

    return dump
