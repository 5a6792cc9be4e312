"""How the linear-model reconstruction (``tasks/attacks/hrec.py``) improves with the number of
public records, on digits: prints the table in docs/RESULTS.md.

    .venv/bin/python docs/examples/hrec_public_records.py

Ridge regression (target: the digit, alpha 1) and logistic regression (even vs odd digits,
C 1) trained on 800 records; 24 records deleted one at a time (each a refit without it); the
Hessian from 25 to 800 public records (disjoint from training) or from the training set itself.
Medians over the deleted records.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression, Ridge

from tasks.attacks.hrec import (
    centred_cosine,
    cosine,
    logistic_hessian,
    maxdiff,
    reconstruct,
    ridge_hessian,
)

N_TRAIN, DELETED, PUBLIC_SIZES = 800, 24, (25, 50, 100, 200, 400, 800)


def main() -> None:
    digits = load_digits()
    x = digits.data / 16.0
    order = np.random.default_rng(0).permutation(len(x))
    train, public_all = order[:N_TRAIN], order[N_TRAIN:]
    print("| model | public records | HRec cos | HRec centred | MaxDiff centred | "
          "public mean cos |")
    print("|---|---|---|---|---|---|")
    for kind in ("ridge", "logistic"):
        if kind == "ridge":
            y = digits.target.astype(float)
            fit = lambda a, b: Ridge(alpha=1.0).fit(a, b)
            predict = lambda m, a: m.predict(a)
        else:
            y = (digits.target % 2).astype(float)
            fit = lambda a, b: LogisticRegression(
                C=1.0, tol=1e-12, max_iter=10_000).fit(a, b)
            predict = lambda m, a: m.predict_proba(a)[:, 1]
        theta = fit(x[train], y[train])
        w, b = np.ravel(theta.coef_), float(np.ravel(theta.intercept_)[0])
        pairs = []
        for i in range(DELETED):
            theta_u = fit(x[np.delete(train, i)], y[np.delete(train, i)])
            pairs.append((x[train[i]], theta_u, np.ravel(theta_u.coef_),
                          float(np.ravel(theta_u.intercept_)[0])))
        for size in (*PUBLIC_SIZES, "training set"):
            public = x[train] if size == "training set" else x[public_all[:size]]
            if size == "training set":
                h = (ridge_hessian(public, 1.0) if kind == "ridge"
                     else logistic_hessian(public, w, b, 1.0))
            else:
                h = (ridge_hessian(public, 1.0, n_train=N_TRAIN) if kind == "ridge"
                     else logistic_hessian(public, w, b, 1.0, n_train=N_TRAIN))
            mean = x[public_all[:400]].mean(0)  # one reference mean for every row
            rows = []
            for record, theta_u, w_u, b_u in pairs:
                guess = reconstruct(w, b, w_u, b_u, h)
                picked = maxdiff(public, predict(theta, public), predict(theta_u, public))
                rows.append((cosine(guess, record), centred_cosine(guess, record, mean),
                             centred_cosine(picked, record, mean), cosine(mean, record)))
            med = np.median(rows, axis=0)
            print(f"| {kind} | {size} | {med[0]:.3f} | {med[1]:.3f} | {med[2]:.3f} | "
                  f"{med[3]:.3f} |")


if __name__ == "__main__":
    main()
