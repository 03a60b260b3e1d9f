"""Reference crop boxes from torchvision's own RandomResizedCrop.get_params, with every random draw it made.

Usage: rrc_params.py N_CASES SEED

For each case it calls torchvision.transforms.RandomResizedCrop.get_params (the real function, unmodified)
on a W x H image with some (scale, ratio), while torch's random functions are wrapped so that each draw is
recorded:
  * "record" cases run torch's own RNG (torch.manual_seed(case number)) and log what it produced;
  * "replay" cases feed chosen values instead, to reach edges torch's RNG rarely hits: interval ends, and
    "tie" pairs of (area, log-ratio) draws for which sqrt(area * aspect) lands on or next to k + 0.5, where
    Python's round-half-to-even, or torch's float32 exp against a float64 one, changes the box; the value
    actually used (after float32 rounding by the tensor) is what is logged.
The loader's test (loader/tests/augment.rs) replays the logged draws through our implementation and
demands the same box. Output, one record per line, floats in Python's round-trip repr:
  case W H scale0 scale1 ratio0 ratio1
  u FROM TO VALUE      (one torch.empty(1).uniform_(FROM, TO) call)
  r LOW HIGH VALUE     (one torch.randint(LOW, HIGH, (1,)) call)
  box TOP LEFT HEIGHT WIDTH
"""

import math
import random
import sys

import numpy as np
import torch
from torchvision.transforms import RandomResizedCrop

DEFAULT_SCALE = (0.08, 1.0)
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# Odd configurations: degenerate ranges, ranges forcing the fallback and its ratio clamping, ratio bounds
# (0.4, 2.5) whose clamped fallback side is a rounding tie on odd sides.
OTHER_SCALES = [(0.5, 1.0), (1.0, 1.0), (0.01, 0.02), (0.9, 1.5), (0.08, 0.08)]
OTHER_RATIOS = [(1.0, 1.0), (0.5, 2.0), (0.4, 2.5), (0.2, 5.0), (2.5, 3.0), (0.1, 0.2), (3.0 / 4.0, 4.0 / 3.0)]
TINY = [(1, 1), (1, 2), (2, 1), (2, 2), (3, 3), (1, 4), (4, 1), (3, 500), (500, 3), (1, 1000), (1000, 1),
        (5, 4), (7, 13), (224, 224), (500, 375), (375, 500), (4000, 3000), (3000, 4000)]


class Patch:
    """Wraps Tensor.uniform_ and torch.randint; in replay mode `chooser` picks the values."""

    def __init__(self):
        self.log = []
        self.chooser = None
        self.orig_uniform = torch.Tensor.uniform_
        self.orig_randint = torch.randint
        patch = self

        def uniform_(t, a=0.0, b=1.0, *args, **kwargs):
            lo, hi = float(a), float(b)
            if patch.chooser is None:
                patch.orig_uniform(t, a, b, *args, **kwargs)
            else:
                t.fill_(patch.chooser.uniform(lo, hi))
            patch.log.append(("u", lo, hi, t.item()))
            return t

        def randint(low, high, size, *args, **kwargs):
            if patch.chooser is None:
                out = patch.orig_randint(low, high, size, *args, **kwargs)
            else:
                out = torch.tensor([patch.chooser.randint(low, high)])
            patch.log.append(("r", int(low), int(high), int(out.item())))
            return out

        torch.Tensor.uniform_ = uniform_
        torch.randint = randint


def f32(x):
    return float(np.float32(x))


def f32_neighbours(x, n):
    """x rounded to float32 and its n float32 neighbours on each side."""
    out, up, down = [f32(x)], np.float32(x), np.float32(x)
    for _ in range(n):
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
        out += [float(up), float(down)]
    return out


class Chooser:
    """Replay values: often an interval end or a rounding tie, otherwise anywhere inside."""

    def __init__(self, rng, area):
        self.rng = rng
        self.area = area
        self.calls = 0
        self.pending = None  # the log-ratio draw that completes a tie pair

    def tie_pair(self, s_lo, s_hi, r_lo, r_hi):
        """(area draw, log-ratio draw) making sqrt(area * u * aspect) (nearly) k + 0.5, or None."""
        rng, area = self.rng, self.area
        for _ in range(40):
            # Log-ratio 0 gives aspect exactly 1 and exact ties; others probe float32 vs float64 exp.
            v = 0.0 if (r_lo <= 0.0 < r_hi and rng.random() < 0.5) else f32(rng.uniform(r_lo, r_hi))
            a32 = torch.exp(torch.tensor([v], dtype=torch.float32)).item()
            a64 = math.exp(v)
            if a32 != f32(a64):
                # torch's vectorised float32 exp is within 1 ulp, not correctly rounded, and varies with the
                # CPU's SIMD level; the loader rounds the float64 exp. Ties built on such a v would test
                # torch's exp, not the crop algorithm.
                continue
            k_lo = math.ceil(math.sqrt(area * s_lo * a32))
            k_hi = math.floor(math.sqrt(area * min(s_hi, 1.0) * a32))
            if k_hi < k_lo:
                continue
            k = rng.randint(k_lo, k_hi)
            for u in f32_neighbours((k + 0.5) ** 2 / (area * a32), 3):
                if not (s_lo <= u < s_hi):
                    continue
                x = math.sqrt(area * u * a32)
                w32, w64, away = round(x), round(math.sqrt(area * u * a64)), math.floor(x + 0.5)
                if w32 != w64 or w32 != away:
                    return u, v
        return None

    def uniform(self, lo, hi):
        self.calls += 1
        if self.pending is not None:
            v, self.pending = self.pending, None
            return v
        if self.calls % 2 == 1 and self.rng.random() < 0.5:
            # An area draw; the next call asks for the log-ratio over (log_lo, log_hi) of the case.
            pair = self.tie_pair(lo, hi, *self.log_ratio)
            if pair is not None:
                self.pending = pair[1]
                return pair[0]
        k = self.rng.random()
        if k < 0.15:
            return lo
        if k < 0.25:
            return math.nextafter(hi, lo)
        return lo + (hi - lo) * self.rng.random()

    def randint(self, low, high):
        k = self.rng.random()
        if k < 0.25:
            return low
        if k < 0.5:
            return high - 1
        return self.rng.randrange(low, high)


def main():
    n_cases, seed = int(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(seed)
    patch = Patch()
    out = []
    for k in range(n_cases):
        if k < len(TINY) * 2:
            w, h = TINY[k % len(TINY)]
        else:
            w = max(1, int(math.exp(rng.uniform(0.0, math.log(4000.0)))))
            h = max(1, int(math.exp(rng.uniform(0.0, math.log(4000.0)))))
        if rng.random() < 0.7:
            scale, ratio = DEFAULT_SCALE, DEFAULT_RATIO
        else:
            scale, ratio = rng.choice(OTHER_SCALES), rng.choice(OTHER_RATIOS)
        replay = rng.random() < 0.3
        patch.chooser = None
        if replay:
            patch.chooser = Chooser(rng, w * h)
            # What get_params passes as the bounds of its log-ratio draws (float32 logs).
            patch.chooser.log_ratio = tuple(float(x) for x in torch.log(torch.tensor(list(ratio))))
        torch.manual_seed(k)
        patch.log = []
        # get_params only reads the image's shape; an expanded 1-element tensor costs nothing.
        img = torch.zeros(1, 1, 1).expand(3, h, w)
        i, j, hh, ww = RandomResizedCrop.get_params(img, list(scale), list(ratio))
        out.append(f"case {w} {h} {scale[0]!r} {scale[1]!r} {ratio[0]!r} {ratio[1]!r}")
        for kind, a, b, v in patch.log:
            out.append(f"{kind} {a!r} {b!r} {v!r}")
        out.append(f"box {i} {j} {hh} {ww}")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
