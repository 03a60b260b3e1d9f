"""Reference pixels from torchvision on PIL images, for loader/tests/augment.rs.

Usage: resize_ref.py < ops > pixels

Each line of stdin is one op on an image given as RAW WIDTH HEIGHT: RAW is a file of WIDTH x HEIGHT RGB
bytes, rows top to bottom, no padding. The outputs are written to stdout as raw RGB bytes, one after
another in op order:
  train RAW W H TOP LEFT H W OUT_H OUT_W
        F.resized_crop(img, TOP, LEFT, H, W, [OUT_H, OUT_W], BILINEAR, antialias=True) on a PIL image
  train_tensor RAW W H ...   the same on a uint8 tensor (torchvision's tensor kernel), for comparison
  val RAW W H RESIZE CROP    CenterCrop(CROP)(Resize(RESIZE)(img)), bilinear: the ImageNet eval transform
One process serves many ops because importing torch takes seconds.
"""

import sys

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import CenterCrop, InterpolationMode, Resize
from torchvision.transforms import functional as F


def load(path, width, height):
    with open(path, "rb") as f:
        raw = f.read()
    img = Image.frombytes("RGB", (width, height), raw)
    chw = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3).copy()).permute(2, 0, 1)
    return img, chw


def main():
    out = sys.stdout.buffer
    cache = {}
    for line in sys.stdin:
        op, path, width, height, *args = line.split()
        key = (path, int(width), int(height))
        if key not in cache:
            cache.clear()
            cache[key] = load(*key)
        img, chw = cache[key]
        if op in ("train", "train_tensor"):
            top, left, h, w, out_h, out_w = map(int, args)
            if op == "train":
                res = F.resized_crop(img, top, left, h, w, [out_h, out_w], InterpolationMode.BILINEAR, antialias=True)
                data = res.tobytes()
            else:
                res = F.resized_crop(chw, top, left, h, w, [out_h, out_w], InterpolationMode.BILINEAR, antialias=True)
                data = res.permute(1, 2, 0).contiguous().numpy().tobytes()
        elif op == "val":
            resize, crop = map(int, args)
            res = CenterCrop(crop)(Resize(resize, interpolation=InterpolationMode.BILINEAR)(img))
            data = res.tobytes()
        else:
            raise SystemExit(f"unknown op {op!r}")
        out.write(data)
    out.flush()


if __name__ == "__main__":
    main()
