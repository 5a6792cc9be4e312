"""Which targets feature recovery optimises together.

Targets that share an evaluation model and a request size run as one batched program. Its
per-trial gradients are materialised (trials x parameters), and past a few tens of MiB the
batch stops paying: ResNet-18 (11M parameters) on a 2-core CPU recovers 8 targets x 2
restarts in 9.9 s all at once, 5.6 s four at a time and 4.2 s one at a time, against 5.2 s
for the plain loop (2026-12-04). So a group is split into chunks of targets whose per-trial
gradients fit :data:`TRIAL_GRADIENT_BUDGET` for the device; small models (the ConvNet: 0.7
MiB a trial) stay in one chunk. Not under a progress callback: every group counts its
iterations from 1 again, which a search's callback (ASHA) would read as a restart.
"""

from __future__ import annotations

import torch
from torch import nn

# Bytes of per-trial gradients one chunk may hold, by device type.
TRIAL_GRADIENT_BUDGET = {"cpu": 64 * 2**20, "cuda": 4 * 2**30, "mps": 1 * 2**30}


def _same_model(a: nn.Module, b: nn.Module) -> bool:
    if a is b:
        return True
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[n], sb[n]) for n in sa)


def group_targets(targets: list[tuple[nn.Module, int]], restarts: int,
                  device: torch.device | str, chunk: bool = True
                  ) -> list[tuple[nn.Module, int, list[int]]]:
    """(model, k, target indices) per group, from each target's (evaluation model, k)."""
    groups: list[tuple[nn.Module, int, list[int]]] = []
    for i, (model, k) in enumerate(targets):
        for gmodel, gk, members in groups:
            if gk == k and _same_model(gmodel, model):
                members.append(i)
                break
        else:
            groups.append((model, k, [i]))
    if not chunk:
        return groups
    budget = TRIAL_GRADIENT_BUDGET.get(torch.device(device).type, TRIAL_GRADIENT_BUDGET["cpu"])
    out = []
    for model, k, members in groups:
        per_target = restarts * sum(p.numel() * p.element_size() for p in model.parameters())
        size = max(1, int(budget // max(per_target, 1)))
        out.extend((model, k, members[i:i + size]) for i in range(0, len(members), size))
    return out
