# make_pairs.py: three kinds of user pair on digits, k = 1 and k = 10.
import copy

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

digits = load_digits()
x, y = (digits.images / 16).astype(np.float32), digits.target
np.savez("data.npz", x_train=x[:1400], y_train=y[:1400], x_test=x[1400:], y_test=y[1400:])
xt, yt = torch.from_numpy(x[:1400])[:, None], torch.from_numpy(y[:1400]).long()


def train(keep, seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    keep = torch.as_tensor(keep)
    for _ in range(30):
        for idx in keep[torch.randperm(len(keep))].split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    return net.eval()


def export(model, name):
    program = torch.export.export(model, (torch.rand(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, f"{name}.pt2")


everything = np.arange(1400)
full = train(everything, 0)
for k in (1, 10):
    forget = np.random.default_rng(k).choice(1400, k, replace=False)
    np.savetxt(f"forget_k{k}.txt", forget, fmt="%d")
    rest = np.setdiff1d(everything, forget)
    # (a) true null: two seeds, neither saw the claimed records
    export(train(rest, 1), f"null_k{k}_theta")
    export(train(rest, 2), f"null_k{k}_theta_u")
    # (b) exact retraining: theta on all, theta_u retrained (same seed) without the k records
    export(full, f"retrain_k{k}_theta")
    export(train(rest, 0), f"retrain_k{k}_theta_u")
    # (c) one gradient-ascent step at lr 1.0 on the k records (README's make_pair.py)
    ga = copy.deepcopy(full)
    idx = torch.as_tensor(forget)
    loss = nn.functional.cross_entropy(ga(xt[idx]), yt[idx])
    for p, g in zip(ga.parameters(), torch.autograd.grad(loss, list(ga.parameters()))):
        p.data += g
    export(full, f"ascent_k{k}_theta")
    export(ga.eval(), f"ascent_k{k}_theta_u")
    test = torch.from_numpy(x[1400:])[:, None]
    acc = {n: float((m(test).argmax(1).numpy() == y[1400:]).mean())
           for n, m in (("full", full), ("ascent", ga))}
    print(k, forget.tolist(), acc)
