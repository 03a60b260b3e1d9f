"""The Python package against the Rust loader: same batches, zero copy, recycling, errors, Ctrl-C."""

import gc
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import imgloader

from conftest import CLASSES, PER_CLASS

N = len(CLASSES) * PER_CLASS


def batches(loader, epoch=0):
    """(pixels, labels, indices) per batch, copied out, through the Array objects."""
    out = []
    for images, labels in loader.epoch(epoch, as_torch=False):
        out.append((np.from_dlpack(images).copy(), np.from_dlpack(labels).copy(), images.indices))
    return out


def test_build_info_names_the_decoder():
    info = imgloader.build_info()
    assert info["jpeg"] in ("libjpeg-turbo", "zune-jpeg")
    assert info["turbojpeg"] == (info["jpeg"] == "libjpeg-turbo")


def test_source_from_folders_and_tar(dataset):
    for path in (dataset / "train", dataset / "train.tar"):
        source = imgloader.open(path)
        assert len(source) == N
        assert source.classes == CLASSES
        assert [source.label(i) for i in range(N)] == [i // PER_CLASS for i in range(N)]


@pytest.mark.parametrize("where", ["train", "train.tar"])
@pytest.mark.parametrize("transform", ["train", "val"])
def test_batches_are_the_rust_loaders(dataset, rust_dump, where, transform):
    path = dataset / where
    settings = dict(batch_size=4, seed=3, epoch=1, transform=transform)
    want_pixels, want_meta = rust_dump(path, resize=40, threads=2, **settings)
    loader = imgloader.Loader(imgloader.open(path), batch_size=4, threads=3, transform=transform,
                              crop_size=32, val_resize=40, seed=3)
    got = batches(loader, epoch=1)
    assert len(got) == len(want_meta) == len(loader)
    for (pixels, labels, indices), want, meta in zip(got, want_pixels, want_meta):
        assert pixels.dtype == np.uint8 and pixels.shape == want.shape
        assert np.array_equal(pixels, want)  # byte-identical
        assert labels.dtype == np.int64 and labels.tolist() == meta["labels"]
        assert indices == meta["indices"]
        assert labels.tolist() == [i // PER_CLASS for i in indices]


def test_rank_partition_matches_rust_and_covers_the_epoch(dataset, rust_dump):
    source = imgloader.open(dataset / "train.tar")
    seen = []
    for rank in (0, 1):
        loader = imgloader.Loader(source, batch_size=4, threads=2, crop_size=32, seed=5, rank=rank,
                                  world_size=2)
        assert loader.samples_per_epoch == (N + 1) // 2
        assert len(loader) == -(-((N + 1) // 2) // 4)
        got = batches(loader, epoch=2)
        want_pixels, want_meta = rust_dump(dataset / "train.tar", batch_size=4, seed=5, epoch=2, rank=rank,
                                           world=2)
        for (pixels, _, indices), want, meta in zip(got, want_pixels, want_meta):
            assert np.array_equal(pixels, want) and indices == meta["indices"]
        seen += [i for _, _, idx in got for i in idx]
    # DistributedSampler: every sample once, padded to a multiple of the world size by repeating.
    assert sorted(set(seen)) == list(range(N))
    assert len(seen) == N + 1


def test_len_and_drop_last(dataset):
    source = imgloader.open(dataset / "train")
    assert len(imgloader.Loader(source, batch_size=4, crop_size=32)) == 6
    loader = imgloader.Loader(source, batch_size=4, crop_size=32, drop_last=True)
    assert len(loader) == 5
    assert [len(x) for x, _ in loader.epoch(0)] == [4] * 5
    val = imgloader.Loader(source, batch_size=4, crop_size=32, transform="val")
    assert sum(len(y) for _, y in val.epoch(0)) == N


def test_threads_do_not_change_batches(dataset):
    source = imgloader.open(dataset / "train")
    runs = [batches(imgloader.Loader(source, batch_size=5, threads=t, crop_size=24, seed=1)) for t in (1, 4)]
    for a, b in zip(*runs):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_rank_and_world_default_to_torch_distributed(dataset, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 3)
    loader = imgloader.Loader(imgloader.open(dataset / "train"), batch_size=4, crop_size=32)
    assert (loader.rank, loader.world_size) == (1, 3)
    assert loader.samples_per_epoch == N // 3


def test_tensors_share_the_loaders_buffer(dataset):
    loader = imgloader.Loader(imgloader.open(dataset / "train"), batch_size=4, crop_size=32)
    images, labels = next(iter(loader.epoch(0, as_torch=False)))
    assert images.shape == [4, 32, 32, 3] and images.dtype == "uint8"
    assert labels.shape == [4] and labels.dtype == "int64"
    t = torch.from_dlpack(images)  # DLPack 1.x (versioned capsule)
    assert t.dtype == torch.uint8 and tuple(t.shape) == (4, 32, 32, 3) and t.is_contiguous()
    assert t.data_ptr() == images.data_ptr
    legacy = torch.utils.dlpack.from_dlpack(images.__dlpack__())  # the unversioned capsule
    assert legacy.data_ptr() == images.data_ptr
    y = torch.from_dlpack(labels)
    assert y.dtype == torch.int64 and y.data_ptr() == labels.data_ptr
    assert y.tolist() == [i // PER_CLASS for i in images.indices]
    # Pixels first, then the label area (8-byte aligned) of the same allocation.
    assert labels.data_ptr >= images.data_ptr + images.nbytes and labels.data_ptr % 8 == 0
    # The default iteration hands out torch tensors directly.
    x, y = next(iter(loader.epoch(0)))
    assert isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert not x.is_pinned()


def test_buffers_are_recycled_when_tensors_are_freed(dataset):
    loader = imgloader.Loader(imgloader.open(dataset / "train"), batch_size=2, threads=1, prefetch=1,
                              crop_size=32)
    addresses = set()
    for epoch in range(3):
        for x, _ in loader.epoch(epoch):
            addresses.add(x.data_ptr())
    # 33 batches through a window of prefetch (1) + the one held: the same few buffers over and over.
    assert len(addresses) <= 3 and loader.buffers_allocated <= 3
    # A kept tensor keeps its buffer out of circulation; the loader allocates another instead of
    # overwriting it.
    kept = next(iter(loader.epoch(0)))[0]
    before = kept.clone()
    for x, _ in loader.epoch(1):
        assert x.data_ptr() != kept.data_ptr()
    assert torch.equal(kept, before)


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_memory_stays_flat_over_many_epochs(dataset):
    loader = imgloader.Loader(imgloader.open(dataset / "train.tar"), batch_size=8, threads=2, crop_size=64)
    for epoch in range(5):
        for x, y in loader.epoch(epoch):
            x.float().mean()
    gc.collect()
    warm = rss_mb()
    for epoch in range(5, 65):
        for x, y in loader.epoch(epoch):
            x.float().mean()
    gc.collect()
    # 60 epochs x 3 batches of 98 KB: a leak of one buffer per batch would be ~18 MB.
    assert rss_mb() - warm < 8, (warm, rss_mb())
    assert loader.buffers_allocated <= 2 * 2 + 2


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "no-such-dataset"
    with pytest.raises(FileNotFoundError, match="no-such-dataset"):
        imgloader.open(missing)


def test_broken_tar_names_it(tmp_path):
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"this is not a tar archive at all" * 40)
    with pytest.raises(Exception, match="broken.tar"):
        imgloader.Loader(imgloader.open(broken), batch_size=2)


def test_bad_arguments_are_value_errors(dataset):
    source = imgloader.open(dataset / "train")
    with pytest.raises(ValueError, match="transform=\"rotate\""):
        imgloader.Loader(source, transform="rotate")
    with pytest.raises(ValueError, match="bad="):
        imgloader.Loader(source, bad="ignore")
    with pytest.raises(ValueError, match="batch size"):
        imgloader.Loader(source, batch_size=0)
    with pytest.raises(ValueError, match="rank"):
        imgloader.Loader(source, rank=2, world_size=2)
    with pytest.raises(TypeError, match="imgloader.Source"):
        imgloader.Loader(str(dataset / "train"))
    with pytest.raises(ValueError, match="pin_memory"):
        if not torch.cuda.is_available():
            imgloader.Loader(source, pin_memory=True)
        else:
            raise ValueError("pin_memory: CUDA here, tested elsewhere")


def test_a_corrupt_image_is_named_or_skipped(dataset, tmp_path):
    root = tmp_path / "corrupt"
    for c in CLASSES:
        os.makedirs(root / c)
        for f in os.listdir(dataset / "train" / c):
            (root / c / f).write_bytes((dataset / "train" / c / f).read_bytes())
    (root / "bee" / "bee_3.JPEG").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    source = imgloader.open(root)
    failing = imgloader.Loader(source, batch_size=N, crop_size=32, bad="fail")
    with pytest.raises(imgloader.LoaderError, match="bee_3.JPEG"):
        list(failing.epoch(0))
    skipping = imgloader.Loader(source, batch_size=N, crop_size=32, bad="skip")
    (images, _), = list(skipping.epoch(0, as_torch=False))
    assert len(images.bad) == 1 and "bee_3.JPEG" in images.bad[0][1]
    assert skipping.bad_samples == 1


CHILD = """
import sys, imgloader
loader = imgloader.Loader(imgloader.open(sys.argv[1]), batch_size=21, threads=1, prefetch=1,
                          transform="val", crop_size=224, val_resize=256)
print("ready", flush=True)
while True:
    for epoch in range(10**9):
        for x, y in loader.epoch(epoch, as_torch=False):
            pass
"""


def test_ctrl_c_stops_iteration_promptly(dataset):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(dataset / "train")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(1.0)  # well into the loop, mostly waiting for batches
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=10)
        took = time.monotonic() - sent
    finally:
        child.kill()
    assert "KeyboardInterrupt" in err, err
    assert child.returncode != 0
    assert took < 2.0, took
