"""Prints the W&B runs saved offline under a WANDB_DIR as JSON: [{"name", "config", "history": [row]}],
one per run, oldest first, read from each run's transaction log (run-ID.wandb) with wandb's protobuf
messages. Used by trainer/tests/metrics.rs.

    python read_wandb.py WANDB_DIR

wandb 0.31 has no Python reader of that file; its framing is LevelDB's log format after a 7-byte
header (":W&B", magic 0xBEE1, version 0): 32 KiB blocks of chunks, each chunk a 7-byte header (CRC-32C,
u16 length, type: 1 full, 2 first, 3 middle, 4 last) and its data.
"""

import glob
import json
import os
import struct
import sys

from wandb.proto import wandb_internal_pb2

BLOCK = 32768


def records(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", f"{path}: not a W&B transaction log"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        if kind in (1, 2):
            pending = chunk
        else:
            pending += chunk
        if kind in (1, 4):
            r = wandb_internal_pb2.Record()
            r.ParseFromString(pending)
            yield r


def run(path):
    name, config, history = None, {}, []
    for r in records(path):
        which = r.WhichOneof("record_type")
        if which == "run":
            name = r.run.display_name
            for item in r.run.config.update:
                config[item.key] = json.loads(item.value_json)
        elif which == "config":
            for item in r.config.update:
                config[item.key] = json.loads(item.value_json)
        elif which == "history":
            row = {}
            for item in r.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            history.append(row)
    return {"name": name, "config": config, "history": history}


paths = sorted(glob.glob(os.path.join(sys.argv[1], "wandb", "offline-run-*", "run-*.wandb")))
print(json.dumps([run(p) for p in paths]))
