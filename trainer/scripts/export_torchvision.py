#!/usr/bin/env python3
"""Export a torchvision classification model's weights to a safetensors file for `imgtrain --pretrained`.

    export_torchvision.py resnet50 resnet50.safetensors --weights DEFAULT       # torchvision's ImageNet weights
    export_torchvision.py resnet50 r50-random.safetensors --random --seed 0 --num-classes 10

The file holds the model's `state_dict` exactly, `num_batches_tracked` counters included (imgtrain ignores
them), so `model.load_state_dict(...)` takes it back in strict mode. The safetensors format is written
here directly (an 8-byte little-endian header length, a JSON header giving each tensor's dtype, shape and
byte range, then the raw little-endian bytes), so only torch and torchvision are needed.

`--random-bn` (with `--random`) gives every batch norm a random affine transform and running statistics
measured on random images, so that a reimplementation that ignores any of them gives other logits: the
parity tests use it.
"""

import argparse
import ctypes
import json
import os
import struct
import sys

DTYPES = {
    "torch.float64": "F64",
    "torch.float32": "F32",
    "torch.float16": "F16",
    "torch.bfloat16": "BF16",
    "torch.int64": "I64",
    "torch.int32": "I32",
    "torch.int16": "I16",
    "torch.int8": "I8",
    "torch.uint8": "U8",
    "torch.bool": "BOOL",
}


def write_safetensors(path, tensors, metadata=None):
    """Writes `tensors` (name -> torch.Tensor) to `path` in the safetensors format, atomically."""
    if sys.byteorder != "little":
        raise SystemExit("error: safetensors stores little-endian data; this machine is big-endian")
    header = {}
    blobs = []
    offset = 0
    for name, tensor in tensors.items():
        t = tensor.detach().cpu().contiguous()
        dtype = DTYPES.get(str(t.dtype))
        if dtype is None:
            raise SystemExit(f"error: tensor {name!r} has dtype {t.dtype}, which safetensors cannot store")
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        blobs.append((t, nbytes))
        offset += nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # Pad the header with spaces so the data starts 8-byte aligned, as the reference writer does.
    encoded += b" " * (-len(encoded) % 8)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for t, nbytes in blobs:
            if nbytes:
                f.write(ctypes.string_at(t.data_ptr(), nbytes))
    os.replace(tmp, path)


def build_model(arch, weights=None, num_classes=None):
    """torchvision's `arch`, with `weights` (a weights enum name such as DEFAULT) or randomly initialised."""
    import torchvision

    if arch not in torchvision.models.list_models(module=torchvision.models):
        known = ", ".join(sorted(torchvision.models.list_models(module=torchvision.models)))
        raise SystemExit(f"error: torchvision has no classification model {arch!r}; known: {known}")
    kwargs = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return torchvision.models.get_model(arch, weights=weights, **kwargs)


def randomise_batch_norms(model, image_size, generator):
    """Random affine parameters and running statistics measured on random images for every batch norm."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for bn in norms:
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=generator) + 0.5)
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=generator) * 0.2)
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average over the calibration batches
        was_training = model.training
        model.train()
        for _ in range(2):
            model(torch.randn(4, 3, image_size, image_size, generator=generator))
        model.train(was_training)
        for bn in norms:
            bn.momentum = 0.1
            bn.num_batches_tracked.zero_()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("arch", help="torchvision model name, e.g. resnet50, efficientnet_b0, mobilenet_v3_large")
    p.add_argument("out", help="safetensors file to write")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", metavar="NAME", help="torchvision weights: DEFAULT, IMAGENET1K_V1, ... (downloads)")
    src.add_argument("--random", action="store_true", help="random initialisation (torchvision's own init)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random (default 0)")
    p.add_argument("--num-classes", type=int, help="classifier size (default: 1000, or the weights' categories)")
    p.add_argument("--random-bn", action="store_true", help="with --random: random batch-norm parameters and statistics")
    p.add_argument("--image-size", type=int, default=64, help="image size for --random-bn's statistics (default 64)")
    args = p.parse_args(argv)
    if args.random_bn and not args.random:
        p.error("--random-bn needs --random")

    import torch

    torch.manual_seed(args.seed)
    try:
        model = build_model(args.arch, weights=args.weights, num_classes=args.num_classes)
    except (OSError, ValueError, KeyError) as e:  # no network, unknown weights name, num_classes clash
        what = f"weights {args.weights} of {args.arch}" if args.weights else args.arch
        raise SystemExit(f"error: cannot build {what}: {type(e).__name__}: {e}") from None
    if args.random_bn:
        randomise_batch_norms(model, args.image_size, torch.Generator().manual_seed(args.seed + 1))
    model.eval()
    state = model.state_dict()
    source = f"weights={args.weights}" if args.weights else f"random seed={args.seed}"
    write_safetensors(args.out, state, {"arch": args.arch, "source": source, "format": "pt"})
    print(f"wrote {len(state)} tensors of {args.arch} ({source}) to {args.out}")


if __name__ == "__main__":
    main()
