"""Print torchvision ImageFolder's samples of a folder: `relative/path<TAB>label` per line, in order.

Used by loader/tests/sources.rs to check that our class-folder order and labels match torchvision's.
"""

import os
import sys

from torchvision.datasets import ImageFolder


def main() -> None:
    root = sys.argv[1]
    dataset = ImageFolder(root, loader=lambda path: path)
    for path, label in dataset.samples:
        print(f"{os.path.relpath(path, root)}\t{label}")


if __name__ == "__main__":
    main()
