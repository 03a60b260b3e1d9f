#!/usr/bin/env python3
"""Reference logits for the model parity test (tests/models.rs).

    models_ref.py OUT_DIR < requests

Each request line is `ARCH NUM_CLASSES IMAGE_SIZE SEED`. For each, this writes
`OUT_DIR/ARCH.weights.safetensors` (the state_dict of torchvision's ARCH, randomly initialised with SEED and
random batch norms, written by scripts/export_torchvision.py) and `OUT_DIR/ARCH.ref.safetensors` (`input`:
2 random images; `logits`: torchvision's eval-mode output for them; `logits_channels_last`: the same from
the images in channels_last layout, which runs other kernels), then prints `ok ARCH` (or
`error ARCH: why`) and flushes, so the test can check one architecture while the next is being made.
"""

import os
import sys
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))

import torch  # noqa: E402

from export_torchvision import build_model, randomise_batch_norms, write_safetensors  # noqa: E402


def reference(out_dir, arch, num_classes, size, seed):
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=num_classes)
    gen = torch.Generator().manual_seed(seed + 1)
    randomise_batch_norms(model, size, gen)
    model.eval()
    images = torch.randn(2, 3, size, size, generator=gen)
    with torch.no_grad():
        logits = model(images)
        logits_cl = model(images.contiguous(memory_format=torch.channels_last))
    write_safetensors(os.path.join(out_dir, f"{arch}.weights.safetensors"), model.state_dict())
    write_safetensors(
        os.path.join(out_dir, f"{arch}.ref.safetensors"),
        {"input": images, "logits": logits, "logits_channels_last": logits_cl},
    )


def main():
    out_dir = sys.argv[1]
    # The test runs beside this process on the same cores; more threads only contend.
    torch.set_num_threads(1)
    # readline, not iteration: each request must be answered before the next one is written.
    while line := sys.stdin.readline():
        if not line.strip():
            continue
        arch, num_classes, size, seed = line.split()
        try:
            reference(out_dir, arch, int(num_classes), int(size), int(seed))
            print(f"ok {arch}", flush=True)
        except Exception as e:  # reported to the test, which fails naming the architecture
            traceback.print_exc()
            print(f"error {arch}: {type(e).__name__}: {e}", flush=True)


if __name__ == "__main__":
    main()
