"""Writes a webdataset-layout tar like webdataset's TarWriter would, from a folder of class folders.

argv[1]: folder of class folders; argv[2]: the tar to write. Keys keep the class folder
(`n00000001/img_3`), labels are the sorted class index as `.cls` text, and a `.txt` member rides along.
"""
import io
import os
import sys
import tarfile

root, out = sys.argv[1], sys.argv[2]
classes = sorted(os.listdir(root))
with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:

    def add(name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 1700000000
        tar.addfile(info, io.BytesIO(data))

    for label, c in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(root, c)), reverse=True):
            stem, ext = os.path.splitext(f)
            with open(os.path.join(root, c, f), "rb") as fh:
                data = fh.read()
            key = f"{c}/{stem}"
            add(f"{key}.txt", b"a caption")
            add(f"{key}{ext.lower()}", data)
            add(f"{key}.cls", str(label).encode())
