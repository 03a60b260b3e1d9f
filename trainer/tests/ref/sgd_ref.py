"""torch.optim.SGD on a fixed problem, for trainer/tests/train_optim.rs.

Three parameters, w [3, 4], b [4] and c [2]; at step t the loss is sum(w * G_t) + sum(b * H_t), plus
sum(c * K_t) from step 2 on, so the gradients are exactly G_t, H_t and K_t, and c has no gradient (None,
since zero_grad sets gradients to None) in steps 0 and 1. Prints the parameters and momentum buffers
after each step as JSON (floats print exactly: repr of the f32 value widened to f64).
Usage: sgd_ref.py LR MOMENTUM WEIGHT_DECAY STEPS [NESTEROV(0/1)]
"""

import json
import sys

import torch

lr, momentum, wd, steps = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
nesterov = len(sys.argv) > 5 and sys.argv[5] == "1"
w = torch.nn.Parameter(torch.arange(12, dtype=torch.float32).reshape(3, 4) / 10 - 0.5)
b = torch.nn.Parameter(torch.arange(4, dtype=torch.float32) / 4)
c = torch.nn.Parameter(torch.tensor([0.3, -0.7], dtype=torch.float32))
opt = torch.optim.SGD(
    [b, w, c], lr=lr, momentum=momentum, weight_decay=wd, nesterov=nesterov, foreach=False
)


def buf(p):
    state = opt.state[p]
    if "momentum_buffer" not in state or state["momentum_buffer"] is None:
        return None
    return state["momentum_buffer"].flatten().tolist()


out = []
for t in range(steps):
    g = (torch.arange(12, dtype=torch.float32).reshape(3, 4) - 5 + t) / 7
    h = (torch.arange(4, dtype=torch.float32) * (t + 1) - 1) / 3
    k = torch.tensor([1.0 + t, -0.5 * t], dtype=torch.float32) / 9
    opt.zero_grad()
    loss = (w * g).sum() + (b * h).sum()
    if t >= 2:
        loss = loss + (c * k).sum()
    loss.backward()
    opt.step()
    out.append({
        "w": w.detach().flatten().tolist(),
        "b": b.detach().flatten().tolist(),
        "c": c.detach().flatten().tolist(),
        "w_buf": buf(w),
        "b_buf": buf(b),
        "c_buf": buf(c),
    })
print(json.dumps(out))
