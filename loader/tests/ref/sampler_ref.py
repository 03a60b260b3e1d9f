"""Indices from torch.utils.data.DistributedSampler with shuffle=False, for loader/tests/sampler.rs.

Usage: sampler_ref.py LEN:WORLD:DROP_LAST ...   (DROP_LAST is 0 or 1)
Prints, for each combination and each rank, one line:
  LEN WORLD DROP_LAST RANK NUM_SAMPLES TOTAL_SIZE : INDEX INDEX ...
"""

import sys

from torch.utils.data import DistributedSampler


def main():
    for spec in sys.argv[1:]:
        n, world, drop = (int(x) for x in spec.split(":"))
        for rank in range(world):
            s = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False, drop_last=bool(drop))
            s.set_epoch(3)
            idx = " ".join(str(i) for i in s)
            print(f"{n} {world} {drop} {rank} {s.num_samples} {s.total_size} : {idx}".rstrip())


if __name__ == "__main__":
    main()
