"""Logs an imgtrain run's metrics.jsonl to Weights & Biases, one W&B history row per record.

imgtrain --enable_wandb starts this (compiled into the binary) as a child with --follow: it follows
metrics.jsonl as the run appends to it, and ends when its stdin closes (imgtrain finished, failed or was
killed), after logging the lines written until then. Without --follow it logs a finished run's file
once, so an earlier run can be sent after the fact:

    python trainer/scripts/wandb_sidecar.py RUN_DIR --project imgtrain [--name NAME]

The W&B config is the run's run.json (command line, every resolved setting, versions). Each record's
numbers are logged as KIND/FIELD (train/loss, val/top1, epoch/val_top1, ...) with global_step, the
x-axis of every chart. W&B itself reads WANDB_MODE, WANDB_DIR, WANDB_API_KEY and the rest.
"""

import argparse
import collections
import json
import os
import sys
import threading
import time

import wandb

POLL_SECONDS = 0.5


class Follower:
    """Reads the complete lines appended to a file, like `tail -F`.

    A file replaced or cut shorter (a run starting at an earlier epoch rewrites metrics.jsonl without the
    lines of later epochs) is read again from its start, skipping the lines already read that it still
    begins with: what follows is new.
    """

    def __init__(self, path):
        self.path = path
        self.file = None
        self.inode = None
        self.partial = b""
        # Every complete line read so far, and those of a rewritten file still to be matched against them.
        self.seen = []
        self.matching = collections.deque()

    def new_lines(self):
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        if self.file is None or st.st_ino != self.inode or st.st_size < self.file.tell():
            if self.file is not None:
                self.file.close()
                self.matching = collections.deque(self.seen)
                self.seen = []
            self.file = open(self.path, "rb")
            self.inode = os.fstat(self.file.fileno()).st_ino
            self.partial = b""
        lines = (self.partial + self.file.read()).split(b"\n")
        self.partial = lines.pop()
        out = []
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            self.seen.append(line)
            if self.matching and self.matching[0] == line:
                self.matching.popleft()
                continue
            self.matching.clear()
            out.append(line)
        return out


def row(record):
    """The W&B row of one metrics.jsonl record."""
    kind = record.pop("kind")
    values = {f"{kind}/{k}": v for k, v in record.items() if isinstance(v, (int, float))}
    values["global_step"] = record["global_step"]
    return values


def main():
    ap = argparse.ArgumentParser(prog="wandb_sidecar.py", description=__doc__.split("\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--project", default="imgtrain")
    ap.add_argument("--name")
    ap.add_argument("--follow", action="store_true",
                    help="follow metrics.jsonl until stdin closes")
    args = ap.parse_args()

    with open(os.path.join(args.run_dir, "run.json")) as f:
        config = json.load(f)
    run = wandb.init(project=args.project, name=args.name, config=config,
                     settings=wandb.Settings(console="off"))
    wandb.define_metric("global_step")
    wandb.define_metric("*", step_metric="global_step")

    ended = threading.Event()
    if args.follow:
        def wait_for_close():
            sys.stdin.buffer.read()
            ended.set()
        threading.Thread(target=wait_for_close, daemon=True).start()
    else:
        ended.set()

    follower = Follower(os.path.join(args.run_dir, "metrics.jsonl"))
    while True:
        # Read after the end is known, so that every line written before it is logged.
        last = ended.is_set()
        for line in follower.new_lines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                print(f"wandb_sidecar: skipped a line that is not JSON: {line[:80]}", file=sys.stderr)
                continue
            run.log(row(record))
        if last:
            break
        ended.wait(POLL_SECONDS)
    run.finish()


if __name__ == "__main__":
    main()
