#!/usr/bin/env python3
"""imgloader from Python, timed like `imgtool bench` and `torchvision_ref.py`: the installed `imgloader`
package (`pip install ./python`), batches taken as torch tensors, so the cost of crossing into Python
(GIL, DLPack, tensor creation) is included.

    python benches/imgloader_py_ref.py DATA [--pipeline train|val] [--threads N] [--batch-size B]
                                           [--epochs E] [--max-images M] [--jpeg zune|turbo] [--json]

DATA: what `imgloader.open` reads (class folders, a dataset root with train/, a tar, shards). The output
has the fields of `imgtool bench --json` that benches/compare reads.
"""

import argparse
import json
import os
import platform
import time

import torch

import imgloader

from torchvision_ref import cpu_time, peak_rss


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--pipeline", choices=["train", "val"], default="train")
    ap.add_argument("--threads", "-j", type=int, default=os.cpu_count())
    ap.add_argument("--batch-size", "-b", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-images", type=int, default=0)
    ap.add_argument("--crop-size", type=int, default=224)
    ap.add_argument("--jpeg", choices=["zune", "turbo"], default=None)
    ap.add_argument("--warmup-batches", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    path = args.data
    if os.path.isdir(os.path.join(path, "train")) and not os.path.isdir(os.path.join(path, "train", "train")):
        path = os.path.join(path, "train")
    loader = imgloader.Loader(imgloader.open(path), batch_size=args.batch_size, threads=args.threads,
                              transform=args.pipeline, crop_size=args.crop_size,
                              val_resize=args.crop_size * 256 // 224, seed=args.seed, jpeg=args.jpeg)
    # Warm-up: the pool's threads and first buffers, on an epoch number that is not timed.
    for _ in zip(range(args.warmup_batches), loader.epoch(10**6)):
        pass

    limit = args.max_images or float("inf")
    images, epoch_ips, epoch_rss = 0, [], []
    pids = [os.getpid()]
    # getrusage, not per-thread schedstat: threads that ended during the run (a Python epoch's own thread,
    # FFCV's per-epoch pool) keep counting.
    cpu_start = cpu_time()
    start = time.perf_counter()
    for epoch in range(args.epochs):
        if images >= limit:
            break
        t0, n = time.perf_counter(), 0
        for x, y in loader.epoch(epoch):
            assert x.dtype == torch.uint8 and y.dtype == torch.int64
            n += len(x)
            del x, y
            if images + n >= limit:
                break
        images += n
        epoch_ips.append(round(n / (time.perf_counter() - t0), 2))
        epoch_rss.append(peak_rss(pids))
    secs = time.perf_counter() - start
    cpu = cpu_time() - cpu_start
    ips = images / secs
    result = {
        "tool": "imgloader-python",
        "pipeline": args.pipeline,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "images": images,
        "seconds": round(secs, 4),
        "images_per_sec": round(ips, 2),
        "peak_rss_bytes": peak_rss(pids),
        "bad_samples": loader.bad_samples,
        "cpu_seconds": round(cpu, 4),
        "cpu_ms_per_image": round(cpu * 1e3 / images, 4) if images else None,
        "epoch_images_per_sec": epoch_ips,
        "versions": {"python": platform.python_version(), "imgloader": imgloader.build_info()["version"],
                     "jpeg": imgloader.build_info()["jpeg"]},
    }
    print(json.dumps(result) if args.json else
          f"{images} images in {secs:.2f}s = {ips:.1f} img/s ({args.threads} threads)")


if __name__ == "__main__":
    main()
