"""Reads webdataset shards with the standard library only, grouping members as webdataset does.

Prints {key: {"exts": [...], "cls": int, "name": str}} as JSON, for every *.tar in the folder argv[1].
When the `webdataset` package is importable (not in the reference environment), the shards are also read
through `webdataset.WebDataset` and must give the same keys, extensions and classes.
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

try:
    import webdataset
except ImportError:
    webdataset = None
if webdataset is not None:
    urls = [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".tar")]
    seen = {}
    for sample in webdataset.WebDataset(urls, shardshuffle=False):
        key = sample["__key__"]
        seen[key] = sorted(k for k in sample if not k.startswith("__"))
        assert int(sample["cls"]) == samples[key]["cls"], key
    assert seen == {k: s["exts"] for k, s in samples.items()}, "webdataset disagrees"
    print("webdataset", webdataset.__version__, "agrees on", len(seen), "samples", file=sys.stderr)
print(json.dumps(samples))
