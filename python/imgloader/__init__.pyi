"""Type stubs for imgloader (the native part is `imgloader._imgloader`)."""

import os
from typing import Any, Iterator, Literal, Optional, Tuple, Union, overload

import torch

PathLike = Union[str, os.PathLike]

class LoaderError(RuntimeError):
    """A dataset could not be read or a batch not made; the message names the file or member at fault."""

class Source:
    """A dataset opened by `open`: class folders, a tar (read in place), shards, or a flat val set."""
    def __len__(self) -> int: ...
    @property
    def classes(self) -> list[str]: ...
    def label(self, index: int) -> int: ...
    def name(self, index: int) -> str: ...

def open(path: PathLike, labels: Optional[PathLike] = None, synsets: Optional[PathLike] = None) -> Source:
    """Open a dataset. Raises FileNotFoundError, ValueError or LoaderError naming the culprit."""

def build_info() -> dict[str, Any]:
    """{"version": ..., "jpeg": "libjpeg-turbo" | "zune-jpeg", "turbojpeg": bool, "abi3": "cp39"}"""

class Array:
    """Pixels (uint8 [n, h, w, 3]) or labels (int64 [n]) in the loader's buffer, exported by DLPack."""
    def __dlpack__(self, *, stream: Any = None, max_version: Optional[Tuple[int, int]] = None,
                   dl_device: Optional[Tuple[int, int]] = None, copy: Optional[bool] = None) -> Any: ...
    def __dlpack_device__(self) -> Tuple[int, int]: ...
    @property
    def data_ptr(self) -> int: ...
    @property
    def shape(self) -> list[int]: ...
    @property
    def dtype(self) -> Literal["uint8", "int64"]: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def indices(self) -> list[int]: ...
    @property
    def batch_index(self) -> int: ...
    @property
    def bad(self) -> list[Tuple[int, str]]: ...

class Epoch(Iterator[Tuple[Array, Array]]):
    """One epoch's batches as (images, labels) Arrays. Ctrl-C raises KeyboardInterrupt while waiting."""
    def __iter__(self) -> "Epoch": ...
    def __next__(self) -> Tuple[Array, Array]: ...
    def __len__(self) -> int: ...

class TorchEpoch(Iterator[Tuple[torch.Tensor, torch.Tensor]]):
    """One epoch's batches as (images, labels) torch tensors sharing the loader's memory."""
    def __iter__(self) -> "TorchEpoch": ...
    def __next__(self) -> Tuple[torch.Tensor, torch.Tensor]: ...
    def __len__(self) -> int: ...

class Loader:
    """A parallel, deterministic batch loader; the same batches as the Rust `imgloader::Loader`."""
    source: Source
    rank: int
    world_size: int
    pin_memory: bool
    def __init__(
        self,
        source: Source,
        batch_size: int = 256,
        threads: Optional[int] = None,
        transform: Literal["train", "val"] = "train",
        crop_size: int = 224,
        val_resize: int = 256,
        seed: int = 0,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        drop_last: bool = False,
        shuffle: Optional[bool] = None,
        bad: Literal["skip", "fail", "omit"] = "skip",
        prefetch: Optional[int] = None,
        jpeg: Optional[Literal["zune", "turbo"]] = None,
        pin_memory: bool = False,
    ) -> None: ...
    def __len__(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def samples_per_epoch(self) -> int: ...
    @property
    def buffers_allocated(self) -> int: ...
    @property
    def bad_samples(self) -> int: ...
    @overload
    def epoch(self, epoch: int, start: int = 0, as_torch: Literal[True] = ...) -> TorchEpoch: ...
    @overload
    def epoch(self, epoch: int, start: int = 0, *, as_torch: Literal[False]) -> Epoch: ...
    def __iter__(self) -> TorchEpoch: ...
