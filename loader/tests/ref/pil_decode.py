"""Reference decoder for loader/tests/decode.rs.

For each path on the command line, decode it the way torchvision's default loader does
(`Image.open(f).convert("RGB")`), write the packed RGB bytes to `<path>.rgb`, and print
`<width> <height>` on its own line. A file PIL cannot decode prints `error <message>`.
"""

import sys

from PIL import Image


def main() -> None:
    for path in sys.argv[1:]:
        try:
            with open(path, "rb") as f:
                img = Image.open(f)
                img = img.convert("RGB")
        except Exception as e:  # noqa: BLE001 - report, the Rust side decides
            print("error", type(e).__name__, str(e).replace("\n", " "))
            continue
        with open(path + ".rgb", "wb") as out:
            out.write(img.tobytes())
        print(img.width, img.height)


if __name__ == "__main__":
    main()
