"""Query format: a scikit-learn estimator saved with ``skops.io.dump``.

skops refuses to build any type not on its trusted list; the user names the extra types they
trust under ``pair.trusted``, so nothing they did not list is instantiated."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tasks.pairs.base import PairError, PairSide, buffer, not_a, side_key


class EstimatorModule(torch.nn.Module):
    """(n, *input_shape) float tensor -> logits (n, C) = log(clip(predict_proba, 1e-12)).

    Inputs are flattened, as the estimator was fitted on rows; ``columns`` (its ``classes_`` as
    class ids) places each probability column, and classes it never saw get probability 0, so
    both sides' columns line up (as tasks.models.SklearnModel does). No parameters, no
    gradients.
    """

    def __init__(self, estimator: Any, columns: np.ndarray, num_classes: int) -> None:
        super().__init__()
        self.estimator, self.columns, self.num_classes = estimator, columns, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.detach().cpu().numpy().astype(np.float32).reshape(len(x), -1)
        p = np.zeros((len(rows), self.num_classes))
        p[:, self.columns] = self.estimator.predict_proba(rows)
        logits = np.log(np.clip(p, 1e-12, 1.0)).astype(np.float32)
        return torch.from_numpy(logits).to(x.device)


def _columns(estimator: Any, num_classes: int, path: str, key: str) -> np.ndarray:
    """The estimator's classes_ as column indices; they must be the dataset's class ids."""
    classes = getattr(estimator, "classes_", None)
    if classes is None:
        raise PairError(key, f"{path}: the estimator has no classes_ (is it fitted?)")
    classes = np.asarray(classes)
    ok = classes.dtype.kind in "iu" or (
        classes.dtype.kind == "f" and bool(np.all(classes == np.round(classes))))
    if not ok or len(classes) == 0 or classes.min() < 0 or classes.max() >= num_classes:
        shown = ", ".join(str(c) for c in classes[:5]) + (", ..." if len(classes) > 5 else "")
        raise PairError(key, f"{path}: the estimator's classes_ ({shown}) are not class ids "
                             f"0 .. {num_classes - 1} of the dataset")
    return classes.astype(np.int64)


def load_skops_side(name: str, path: str, data: bytes, trusted: Sequence[str],
                    num_classes: int, device: str) -> PairSide:
    key = side_key(name)
    import skops.io as sio

    try:
        with zipfile.ZipFile(buffer(data)) as archive:
            if "schema.json" not in archive.namelist():
                raise PairError(key, f"{path}: not a skops file (a zip archive without "
                                     "schema.json)")
    except zipfile.BadZipFile as err:
        raise PairError(key, f"{path}: not a skops file (not a zip archive)") from err
    with not_a(key, path, "a skops file"):
        untrusted = sio.get_untrusted_types(data=data)
    refused = sorted(t for t in untrusted if t not in set(trusted))
    if refused:
        raise PairError("pair.trusted", f"{path} holds types not trusted: {', '.join(refused)}; "
                                        "list them under pair.trusted if you trust them")
    with not_a(key, path, "a loadable skops file"):
        estimator = sio.loads(data, trusted=list(trusted))
    if not callable(getattr(estimator, "predict_proba", None)):
        raise PairError(key, f"{path}: the {type(estimator).__name__} has no predict_proba; the "
                             "audit needs class probabilities")
    module = EstimatorModule(estimator, _columns(estimator, num_classes, path, key), num_classes)
    return PairSide(name, False, module, estimator=estimator, source=path, device=device)
