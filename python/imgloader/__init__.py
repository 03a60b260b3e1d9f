"""Read ImageNet-style datasets in Rust threads and hand batches to PyTorch without a copy.

    import imgloader, torch
    loader = imgloader.Loader(imgloader.open("train.tar"), batch_size=256, threads=8)
    for epoch in range(90):
        for images, labels in loader.epoch(epoch):   # u8 [n, 224, 224, 3], int64 [n]
            images = images.cuda(non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
            ...

`images` and `labels` are views of the loader's own buffer (DLPack); the buffer goes back to the loader
when both tensors are freed, so hold on to a batch only as long as you need it.
"""

from . import _imgloader
from ._imgloader import Array, Epoch, LoaderError, Source, build_info, open

__all__ = ["Array", "Epoch", "Loader", "LoaderError", "Source", "TorchEpoch", "build_info", "open"]


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _distributed(rank, world_size):
    """`rank`/`world_size` as given, else torch.distributed's when a process group is up, else 0 of 1."""
    if rank is not None and world_size is not None:
        return rank, world_size
    torch = _torch()
    dist = getattr(torch, "distributed", None) if torch is not None else None
    if dist is not None and dist.is_available() and dist.is_initialized():
        return (dist.get_rank() if rank is None else rank,
                dist.get_world_size() if world_size is None else world_size)
    if (rank is None) != (world_size is None) and rank not in (None, 0):
        raise ValueError(f"rank={rank} needs world_size (torch.distributed is not initialised)")
    return rank or 0, world_size or 1


def _pinner():
    """(register, unregister) callables that page-lock host memory through torch's CUDA runtime."""
    torch = _torch()
    if torch is None or not torch.cuda.is_available():
        raise ValueError("pin_memory=True needs torch with a CUDA device (torch.cuda.is_available() is False); "
                         "leave it off on a CPU-only machine")
    cudart = torch.cuda.cudart()

    def register(ptr, nbytes):
        err = cudart.cudaHostRegister(ptr, nbytes, 0)
        if int(err) != 0:
            raise RuntimeError(f"cudaHostRegister failed: {err}")

    def unregister(ptr):
        cudart.cudaHostUnregister(ptr)

    return register, unregister


class Loader:
    """A parallel, deterministic batch loader over a `Source` (see `imgloader.open`).

    The same (seed, epoch, rank, world_size) gives byte-identical batches whatever `threads` is, and the
    same batches as the Rust loader. `rank`/`world_size` default to torch.distributed's when a process
    group is initialised, so each DDP process reads its own share (PyTorch's DistributedSampler order).
    """

    def __init__(self, source, batch_size=256, threads=None, transform="train", crop_size=224, val_resize=256,
                 seed=0, rank=None, world_size=None, drop_last=False, shuffle=None, bad="skip", prefetch=None,
                 jpeg=None, pin_memory=False):
        if not isinstance(source, Source):
            raise TypeError(f"source must be an imgloader.Source (from imgloader.open), not {type(source).__name__}")
        rank, world_size = _distributed(rank, world_size)
        self._native = _imgloader.Loader(
            source, batch_size=batch_size, threads=threads, transform=transform, crop_size=crop_size,
            val_resize=val_resize, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last,
            shuffle=shuffle, bad=bad, prefetch=prefetch or 0, jpeg=jpeg,
            pin=_pinner() if pin_memory else None)
        self.source = source
        self.rank, self.world_size = rank, world_size
        self.pin_memory = bool(pin_memory)

    def __len__(self):
        return len(self._native)

    @property
    def batch_size(self):
        return self._native.batch_size

    @property
    def samples_per_epoch(self):
        return self._native.samples_per_epoch

    @property
    def buffers_allocated(self):
        return self._native.buffers_allocated

    @property
    def bad_samples(self):
        return self._native.bad_samples

    def epoch(self, epoch, start=0, as_torch=None):
        """The batches of `epoch` as `(images, labels)`: torch tensors (u8 [n, h, w, 3], int64 [n]) when
        torch is importable (or `as_torch=True`), else `Array`s (DLPack exporters). `start` skips that many
        samples of the global order (all ranks together), to resume a run stopped mid-epoch."""
        native = self._native.epoch(epoch, start)
        if as_torch is None:
            as_torch = _torch() is not None
        return TorchEpoch(native) if as_torch else native

    def __iter__(self):
        return iter(self.epoch(0))

    def __repr__(self):
        return (f"imgloader.Loader({self.source!r}, batch_size={self.batch_size}, rank={self.rank}, "
                f"world_size={self.world_size}, {len(self)} batches per epoch)")


class TorchEpoch:
    """An `Epoch` whose batches come as torch tensors sharing the loader's memory."""

    def __init__(self, native):
        import torch
        self._native = native
        self._from_dlpack = torch.from_dlpack

    def __iter__(self):
        return self

    def __next__(self):
        images, labels = next(self._native)
        return self._from_dlpack(images), self._from_dlpack(labels)

    def __len__(self):
        return len(self._native)
