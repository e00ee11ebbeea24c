"""AdamW step time over the trainable parameters of the full RefDet (frozen encoder): foreach vs fused, CPU.

Run: .venv/bin/python benchmarks/adamw_step.py
"""

import time

import torch

from refdet_core.config import config_from_dict
from refdet_core.models.refdet import RefDet

torch.set_num_threads(2)
m = RefDet(config_from_dict({}).model, num_base_classes=12)
ps = [p for n, p in m.named_parameters() if not n.startswith("support_encoder.model")]
print("trainable", sum(p.numel() for p in ps))
res = {}
for fused in (False, True, False, True):
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt = torch.optim.AdamW(qs, lr=1e-3, fused=fused or None)
    for q in qs:
        q.grad = torch.randn_like(q)
    for _ in range(3):
        opt.step()
    t = time.perf_counter()
    for _ in range(20):
        opt.step()
    res.setdefault(fused, []).append((time.perf_counter() - t) / 20 * 1e3)
print({("fused" if k else "foreach"): [round(v, 2) for v in vs] for k, vs in res.items()}, "ms per step")
