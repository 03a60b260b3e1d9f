#!/usr/bin/env python3
"""The torchvision reference for `imgtool bench`: the loader users would otherwise run, on the same files.

    python benches/torchvision_ref.py DATA [--pipeline train|val|decode] [--workers N] [--batch-size B]
                                          [--epochs E] [--max-images M] [--normalize] [--json]

DATA is a folder of class folders (read with torchvision's `ImageFolder`), a dataset root holding `train/`,
or an uncompressed tar of class folders (`n01440764/x.JPEG`, optionally under `./`), whose members are read
in place in the same order as `ImageFolder` lists the extracted folder (by class, folder, file name).

The pipelines match `imgtool bench`:
- train: RandomResizedCrop(224) + RandomHorizontalFlip, as u8 CHW tensors (`PILToTensor`), so neither
  side converts to float on the CPU; `--normalize` gives the usual `ToTensor` + `Normalize` instead.
- val: Resize(256) + CenterCrop(224), u8 (or normalised with `--normalize`).
- decode: open + convert("RGB") only; the worker hands back the size, not the pixels.

The DataLoader is set up as users run it, and as fairly as we can: `num_workers=N` worker processes
(N >= 1 so decoding happens in a worker, like in training scripts; 0 means in the main process),
`shuffle=True` for train and decode, the same batch size, `pin_memory=False` (no GPU here),
`persistent_workers=True`. Timing starts after a warm-up: the workers are started and the first batches
of an untimed pass are consumed; leftovers of that pass are drained before the clock starts.

Output: one line of text, or with `--json` one JSON object with the fields of `imgtool bench --json`
(`images_per_sec`, `threads`, `pipeline`, `images`, ...) plus the versions used. Peak RSS is the sum of
the peak resident sizes of the main process and its workers (pages shared between them count once per
process, so it overstates what the machine needs).
"""

import argparse
import io
import json
import os
import platform
import resource
import sys
import tarfile
import time

import PIL
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, transforms

# What ImageFolder and our loader accept as images (our decoders read JPEG and PNG only).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def pil_rgb(f):
    """ImageFolder's default loader: open, then convert to RGB (which decodes)."""
    img = Image.open(f)
    return img.convert("RGB")


class TarImageFolder(Dataset):
    """The images of an uncompressed tar of class folders, read in place with positioned reads.

    Samples are listed like ImageFolder lists the extracted tar: classes sorted, then by folder, then by
    file name. Each worker process opens the tar once, lazily (a file handle must not cross a fork)."""

    def __init__(self, path, transform):
        self.path = path
        self.transform = transform
        self.fd = None
        members = []
        with tarfile.open(path, mode="r:") as tar:
            for m in tar:
                if not m.isreg():
                    continue
                parts = [p for p in m.name.split("/") if p not in ("", ".")]
                if len(parts) < 2 or any(p.startswith(".") for p in parts):
                    continue
                if not parts[-1].lower().endswith(IMAGE_EXTENSIONS):
                    continue
                members.append((parts[0], "/".join(parts[:-1]), parts[-1], m.offset_data, m.size))
        if not members:
            sys.exit(f"{path}: no images under class folders (a tar of per-class tars or a flat val tar "
                     "is not supported here: extract it and pass the folder)")
        members.sort()
        self.classes = sorted({m[0] for m in members})
        index = {c: i for i, c in enumerate(self.classes)}
        self.samples = [(offset, size, index[cls]) for cls, _, _, offset, size in members]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDONLY)
        offset, size, label = self.samples[i]
        data = os.pread(self.fd, size, offset)
        return self.transform(pil_rgb(io.BytesIO(data))), label

    def sizes(self):
        return [s for _, s, _ in self.samples]


class SizeOnly:
    """The decode pipeline's 'transform': the image is decoded by convert('RGB'); hand back its size."""

    def __call__(self, img):
        return torch.tensor(img.size)


def make_transform(pipeline, normalize, crop):
    if pipeline == "decode":
        return SizeOnly()
    if pipeline == "train":
        steps = [transforms.RandomResizedCrop(crop), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(crop * 256 // 224), transforms.CenterCrop(crop)]
    if normalize:
        steps += [transforms.ToTensor(),
                  transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])]
    else:
        steps += [transforms.PILToTensor()]
    return transforms.Compose(steps)


def open_dataset(path, transform):
    if os.path.isdir(path) and os.path.isdir(os.path.join(path, "train")) and not any(
        e.is_file() for e in os.scandir(path) if e.name.lower().endswith(IMAGE_EXTENSIONS)
    ):
        # A dataset root (train/ + val/) rather than a folder of classes.
        inner = os.path.join(path, "train")
        if all(e.is_dir() for e in os.scandir(inner)):
            path = inner
    if os.path.isdir(path):
        ds = datasets.ImageFolder(path, transform=transform, loader=pil_rgb,
                                  is_valid_file=lambda p: p.lower().endswith(IMAGE_EXTENSIONS)
                                  and not os.path.basename(p).startswith("."))
        return ds, [os.path.getsize(p) for p, _ in ds.samples]
    if os.path.isfile(path):
        ds = TarImageFolder(path, transform)
        return ds, ds.sizes()
    sys.exit(f"{path}: no such file or folder")


def cpu_time():
    """CPU seconds of all threads of this process, ended ones included."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss(pids):
    """Sum of VmHWM (peak resident set) over the given processes, in bytes; 0 where unknown."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def cpu_seconds(pids):
    """(time on a CPU, time runnable but waiting for one) so far, summed over all threads of the given
    processes, in seconds (from schedstat). Load elsewhere on the machine slows the wall clock but not
    the first."""
    on_cpu = waiting = 0
    for pid in pids:
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    fields = f.read().split()
                    on_cpu += int(fields[0])
                    waiting += int(fields[1])
        except (OSError, ValueError, IndexError):
            return None
    return on_cpu / 1e9, waiting / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--pipeline", choices=["train", "val", "decode"], default="train")
    ap.add_argument("--workers", "-j", type=int, default=os.cpu_count())
    ap.add_argument("--batch-size", "-b", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-images", type=int, default=0,
                    help="stop after this many images (whole batches), over all epochs; 0: whole epochs")
    ap.add_argument("--crop-size", type=int, default=224)
    ap.add_argument("--normalize", action="store_true", help="ToTensor + Normalize instead of u8 output")
    ap.add_argument("--warmup-batches", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    for name in ("workers", "epochs", "max_images", "warmup_batches"):
        if getattr(args, name) < 0:
            ap.error(f"--{name.replace('_', '-')} must not be negative")
    if args.batch_size < 1:
        ap.error("--batch-size must be at least 1")

    torch.manual_seed(args.seed)
    dataset, sizes = open_dataset(args.data, make_transform(args.pipeline, args.normalize, args.crop_size))
    mean_size = sum(sizes) / len(sizes)
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=args.pipeline != "val",
        num_workers=args.workers,
        pin_memory=False,
        persistent_workers=args.workers > 0,
        drop_last=False,
    )

    # Warm-up: start the workers (fork, imports) and run the first batches of an untimed pass; the
    # next iter() drains what that pass had prefetched, before the clock starts.
    it = iter(loader)
    for _ in range(min(args.warmup_batches, len(loader))):
        next(it)
    workers = [w.pid for w in getattr(it, "_workers", [])]
    it = iter(loader)

    limit = args.max_images or float("inf")
    images, epochs_run, epoch_ips, epoch_rss = 0, 0, [], []
    pids = [os.getpid()] + workers
    cpu_start = cpu_seconds(pids)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        if images >= limit:
            break
        if epoch > 0:
            it = iter(loader)
        t0, n = time.perf_counter(), 0
        for x, _ in it:
            n += len(x)
            if images + n >= limit:
                break
        images += n
        epochs_run += 1
        epoch_ips.append(round(n / (time.perf_counter() - t0), 2))
        epoch_rss.append(peak_rss([os.getpid()] + workers))
    secs = time.perf_counter() - start
    cpu_end = cpu_seconds(pids)
    cpu = wait = None
    if cpu_start is not None and cpu_end is not None:
        cpu, wait = cpu_end[0] - cpu_start[0], cpu_end[1] - cpu_start[1]

    ips = images / secs
    threads = max(args.workers, 1)
    result = {
        "tool": "torchvision",
        "pipeline": args.pipeline + ("+normalize" if args.normalize else ""),
        "threads": threads,
        "workers": args.workers,
        "batch_size": args.batch_size,
        "epochs": epochs_run,
        "images": images,
        "seconds": round(secs, 4),
        "images_per_sec": round(ips, 2),
        "images_per_sec_per_thread": round(ips / threads, 2),
        # Every sample is visited once per epoch; a partial epoch is a random subset, hence the mean.
        "mb_per_sec": round(images * mean_size / secs / 1e6, 3),
        "peak_rss_bytes": peak_rss([os.getpid()] + workers),
        # ImageFolder + DataLoader stop at the first bad sample; reaching here means there were none.
        "bad_samples": 0,
        # Main process and workers together.
        "cpu_seconds": round(cpu, 4) if cpu is not None else None,
        "cpu_ms_per_image": round(cpu * 1e3 / images, 4) if cpu is not None and images else None,
        "runqueue_wait_seconds": round(wait, 4) if wait is not None else None,
        "epoch_images_per_sec": epoch_ips,
        "epoch_peak_rss_bytes": epoch_rss,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "pillow": PIL.__version__,
        },
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['pipeline']}: {images} images in {secs:.2f}s = {ips:.1f} img/s "
              f"({ips / threads:.1f} per worker, {args.workers} workers), "
              f"{result['mb_per_sec']:.1f} MB/s of encoded images, "
              f"peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB (main + workers)"
              + (f", {result['cpu_ms_per_image']:.2f} ms of CPU per image" if cpu is not None else ""))


if __name__ == "__main__":
    main()
