"""Reads webdataset shards with the standard library only, grouping members as webdataset does.

Prints {key: {"exts": [...], "cls": int, "name": str}} as JSON, for every *.tar in the folder argv[1].
"""
import json
import os
import sys
import tarfile

samples = {}
folder = sys.argv[1]
for shard in sorted(f for f in os.listdir(folder) if f.endswith(".tar")):
    with tarfile.open(os.path.join(folder, shard)) as tar:
        for m in tar.getmembers():
            assert m.isfile(), m.name
            assert m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.mode == 0o644, m
            d, base = os.path.split(m.name)
            stem, ext = base.split(".", 1)
            key = os.path.join(d, stem)
            s = samples.setdefault(key, {"exts": []})
            s["exts"].append(ext)
            data = tar.extractfile(m).read()
            if ext == "cls":
                s["cls"] = int(data.decode())
            elif ext == "json":
                s["name"] = json.loads(data)["name"]
for s in samples.values():
    s["exts"].sort()
print(json.dumps(samples))
