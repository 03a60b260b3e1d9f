"""torch.optim.SGD on a fixed problem, for trainer/tests/train_optim.rs.

Two parameters, w [3, 4] and b [4]; at step t the loss is sum(w * G_t) + sum(b * H_t), so the gradients
are exactly G_t and H_t. Prints the parameters and momentum buffers after each step as JSON.
Usage: sgd_ref.py LR MOMENTUM WEIGHT_DECAY STEPS
"""

import json
import sys

import torch

lr, momentum, wd, steps = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
w = torch.nn.Parameter(torch.arange(12, dtype=torch.float32).reshape(3, 4) / 10 - 0.5)
b = torch.nn.Parameter(torch.arange(4, dtype=torch.float32) / 4)
opt = torch.optim.SGD([b, w], lr=lr, momentum=momentum, weight_decay=wd, foreach=False)
out = []
for t in range(steps):
    g = (torch.arange(12, dtype=torch.float32).reshape(3, 4) - 5 + t) / 7
    h = (torch.arange(4, dtype=torch.float32) * (t + 1) - 1) / 3
    opt.zero_grad()
    ((w * g).sum() + (b * h).sum()).backward()
    opt.step()
    out.append({
        "w": w.detach().flatten().tolist(),
        "b": b.detach().flatten().tolist(),
        "w_buf": opt.state[w]["momentum_buffer"].flatten().tolist() if momentum else None,
        "b_buf": opt.state[b]["momentum_buffer"].flatten().tolist() if momentum else None,
    })
print(json.dumps(out))
