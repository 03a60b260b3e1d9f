#!/usr/bin/env python3
"""Train a torchvision ResNet with SGD, reading data through imgloader or the torchvision DataLoader,
and print per epoch the images per second and the share of time spent waiting for data.

    python python/examples/train_resnet.py demo-data --loader imgloader --epochs 2 --crop-size 48 -b 32
    python python/examples/train_resnet.py demo-data --loader torchvision --epochs 2 --crop-size 48 -b 32

DATA is a dataset root with train/ (class folders) or train.tar, or a folder of class folders. Runs on
the GPU when there is one (imgloader then pins its buffers), else on the CPU.
"""

import argparse
import os
import time

import torch
import torch.nn.functional as F
import torchvision

MEAN = torch.tensor([0.485, 0.456, 0.406]) * 255
STD = torch.tensor([0.229, 0.224, 0.225]) * 255


def train_path(data, loader):
    """The train split: train.tar for imgloader when there is one (read in place), else train/."""
    if loader == "imgloader" and os.path.isfile(os.path.join(data, "train.tar")):
        return os.path.join(data, "train.tar")
    if os.path.isdir(os.path.join(data, "train")):
        return os.path.join(data, "train")
    return data


def imgloader_batches(args, device):
    import imgloader
    source = imgloader.open(train_path(args.data, "imgloader"))
    loader = imgloader.Loader(source, batch_size=args.batch_size, threads=args.workers, crop_size=args.crop_size,
                              seed=args.seed, pin_memory=device.type == "cuda")
    print(f"imgloader {imgloader.build_info()['jpeg']}: {len(source)} images, {len(source.classes)} classes")

    def epoch(e):
        # u8 NHWC straight from the loader's buffer; normalise after the copy to the device.
        for images, labels in loader.epoch(e):
            yield images, labels
    return epoch, len(source.classes)


def torchvision_batches(args, device):
    import torchvision.transforms.v2 as T
    # The same work up to u8 as imgloader (decode, RandomResizedCrop, flip); normalisation on the device.
    transform = T.Compose([T.PILToTensor(), T.RandomResizedCrop(args.crop_size, antialias=True),
                           T.RandomHorizontalFlip()])
    dataset = torchvision.datasets.ImageFolder(train_path(args.data, "torchvision"), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.workers, pin_memory=device.type == "cuda",
                                         persistent_workers=args.workers > 0)
    print(f"torchvision DataLoader: {len(dataset)} images, {len(dataset.classes)} classes")

    def epoch(e):
        torch.manual_seed(args.seed + e)
        for images, labels in loader:  # u8 NCHW
            yield images.permute(0, 2, 3, 1), labels
    return epoch, len(dataset.classes)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--loader", choices=["imgloader", "torchvision"], default="imgloader")
    p.add_argument("-a", "--arch", default="resnet18")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("-b", "--batch-size", type=int, default=32)
    p.add_argument("-j", "--workers", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--wd", "--weight-decay", type=float, default=1e-4)
    p.add_argument("--crop-size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    make = imgloader_batches if args.loader == "imgloader" else torchvision_batches
    batches, classes = make(args, device)
    model = torchvision.models.__dict__[args.arch](num_classes=classes).to(device)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.wd)
    mean, std = MEAN.to(device).view(1, 3, 1, 1), STD.to(device).view(1, 3, 1, 1)

    for e in range(args.epochs):
        model.train()
        start = time.perf_counter()
        waited, seen, loss_sum = 0.0, 0, 0.0
        t = time.perf_counter()
        for images, labels in batches(e):
            waited += time.perf_counter() - t
            # NHWC u8 -> NCHW view (channels_last memory) -> float, normalised, on the device.
            x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().sub_(mean).div_(std)
            y = labels.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            seen += len(y)
            del images, labels  # hand imgloader's buffer back before waiting for the next batch
            t = time.perf_counter()
        secs = time.perf_counter() - start
        print(f"epoch {e}: {seen} images in {secs:.1f}s, {seen / secs:.0f} img/s, "
              f"data wait {100 * waited / secs:.0f}%, loss {loss_sum / max(seen, 1):.3f}", flush=True)


if __name__ == "__main__":
    main()
