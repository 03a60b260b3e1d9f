#!/usr/bin/env python3
"""FFCV, the peer users pick for fast loading, timed like `imgtool bench` on the same images.

    python benches/ffcv_ref.py DATA --beton FILE [--workers N] [--batch-size B] [--epochs E] [--max-images M]
                               [--max-side S] [--json]

FFCV reads its own format: the images of DATA (class folders, a dataset root with train/, or a tar of class
folders, listed as torchvision's ImageFolder lists them) are written once into FILE (`.beton`), JPEG mode
at quality 90, the longer side capped at S (default: the largest side among the files, so that nothing is
downscaled and FFCV decodes what the others decode). Writing is not timed; a FILE that exists is reused.
Then its Loader runs `RandomResizedCropRGBImageDecoder((224, 224))` + `RandomHorizontalFlip()` +
`ToTensor()` (u8 NHWC, like imgloader), random order, N threads, `os_cache=True`. A whole untimed epoch
first lets numba compile the pipeline.

Needs `ffcv==1.0.2` in an environment that already has torch 2.11.0 (see BENCHMARKS.md). Output: the
fields of `imgtool bench --json` that benches/compare reads.
"""

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time

import numpy as np
from PIL import Image

from torchvision_ref import cpu_time, open_dataset, peak_rss


def as_is(img):
    return img


def largest_side(dataset):
    side = 0
    for k in range(len(dataset)):
        img, _ = dataset[k]
        side = max(side, *img.size)
    return side


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--beton", required=True)
    ap.add_argument("--workers", "-j", type=int, default=os.cpu_count())
    ap.add_argument("--batch-size", "-b", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-images", type=int, default=0)
    ap.add_argument("--max-side", type=int, default=0)
    ap.add_argument("--crop-size", type=int, default=224)
    ap.add_argument("--pipeline", choices=["train"], default="train", help="the only one timed here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from ffcv.fields import IntField, RGBImageField
    from ffcv.fields.decoders import IntDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToTensor
    from ffcv.writer import DatasetWriter

    if not os.path.exists(args.beton):
        dataset, _ = open_dataset(args.data, as_is)  # PIL images and labels
        side = args.max_side or largest_side(dataset)
        print(f"writing {args.beton} (jpg, max side {side}, quality 90)", file=sys.stderr)
        os.makedirs(os.path.dirname(os.path.abspath(args.beton)), exist_ok=True)
        tmp = args.beton + ".tmp"
        writer = DatasetWriter(tmp, {"image": RGBImageField(write_mode="jpg", max_resolution=side, jpeg_quality=90),
                                     "label": IntField()}, num_workers=max(args.workers, 1))
        writer.from_indexed_dataset(dataset)
        os.replace(tmp, args.beton)

    loader = Loader(args.beton, batch_size=args.batch_size, num_workers=max(args.workers, 1),
                    order=OrderOption.RANDOM, drop_last=False, os_cache=True, seed=args.seed,
                    pipelines={"image": [RandomResizedCropRGBImageDecoder((args.crop_size, args.crop_size)),
                                         RandomHorizontalFlip(), ToTensor()],
                               "label": [IntDecoder(), ToTensor(), Squeeze()]})
    for _ in loader:  # numba compiles the pipeline on the first epoch
        pass

    limit = args.max_images or float("inf")
    images, epoch_ips = 0, []
    pids = [os.getpid()]
    # getrusage, not per-thread schedstat: threads that ended during the run (a Python epoch's own thread,
    # FFCV's per-epoch pool) keep counting.
    cpu_start = cpu_time()
    start = time.perf_counter()
    for _ in range(args.epochs):
        if images >= limit:
            break
        t0, n = time.perf_counter(), 0
        for x, _ in loader:
            n += len(x)
            if images + n >= limit:
                break
        images += n
        epoch_ips.append(round(n / (time.perf_counter() - t0), 2))
    secs = time.perf_counter() - start
    cpu = cpu_time() - cpu_start
    assert x.dtype.is_floating_point is False and x.shape[-1] == 3, (x.dtype, x.shape)
    ips = images / secs
    result = {
        "tool": "ffcv",
        "pipeline": "train",
        "threads": args.workers,
        "batch_size": args.batch_size,
        "images": images,
        "seconds": round(secs, 4),
        "images_per_sec": round(ips, 2),
        "peak_rss_bytes": peak_rss(pids),
        "bad_samples": 0,
        "cpu_seconds": round(cpu, 4),
        "cpu_ms_per_image": round(cpu * 1e3 / images, 4) if images else None,
        "epoch_images_per_sec": epoch_ips,
        "beton_bytes": os.path.getsize(args.beton),
        "versions": {"python": platform.python_version(), "ffcv": importlib.metadata.version("ffcv"),
                     "numpy": np.__version__, "pillow": Image.__version__},
    }
    print(json.dumps(result) if args.json else
          f"{images} images in {secs:.2f}s = {ips:.1f} img/s ({args.workers} threads)")


if __name__ == "__main__":
    main()
