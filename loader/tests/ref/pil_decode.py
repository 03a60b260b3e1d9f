"""Reference decoder for loader/tests/decode.rs.

For each path on the command line, decode it the way torchvision's default loader does
(`Image.open(f).convert("RGB")`), write the packed RGB bytes to `<path>.rgb`, and print
`<width> <height>` on its own line. A file PIL cannot decode prints `error <message>`.

With `--time ROUNDS` first, nothing is written: the files are decoded ROUNDS times (from bytes
already in memory, one thread) and the best round's images/s is printed.
"""

import io
import sys
import time

from PIL import Image


def decode(f) -> Image.Image:
    img = Image.open(f)
    return img.convert("RGB")


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--time"]:
        rounds, paths = int(args[1]), args[2:]
        blobs = [open(p, "rb").read() for p in paths]
        best = float("inf")
        for _ in range(rounds):
            t = time.perf_counter()
            for b in blobs:
                decode(io.BytesIO(b))
            best = min(best, time.perf_counter() - t)
        print(f"{len(blobs) / best:.0f}")
        return
    for path in args:
        try:
            with open(path, "rb") as f:
                img = decode(f)
        except Exception as e:  # noqa: BLE001 - report, the Rust side decides
            print("error", type(e).__name__, str(e).replace("\n", " "))
            continue
        with open(path + ".rgb", "wb") as out:
            out.write(img.tobytes())
        print(img.width, img.height)


if __name__ == "__main__":
    main()
