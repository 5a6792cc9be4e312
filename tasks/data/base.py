"""The Dataset type, the registry, and how the data root is found."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from tasks.registry import Registry

DATA_ROOT_ENV = "UNLEARN_AUDIT_DATA"


class MissingDataError(FileNotFoundError):
    """A dataset's files are not under the data root."""

    def __init__(self, dataset: str, path: Path, expected: list[str]) -> None:
        self.dataset, self.path, self.expected = dataset, path, expected
        super().__init__(
            f"dataset {dataset!r}: no data at {path}; expected "
            + " or ".join(expected)
            + f" (set --data-root or {DATA_ROOT_ENV})"
        )


class DataError(ValueError):
    """A dataset file is present but malformed: truncated, wrong format, wrong shape or dtype,
    or a pickle naming a global it may not load. ``str()`` is ``<file>: <what is wrong>``."""

    def __init__(self, path: str | os.PathLike, message: str) -> None:
        self.path, self.message = Path(path), message
        # A URI (file:///x, s3://b/x) is shown as given: Path() would fold its "//".
        shown = path if isinstance(path, str) and "://" in path else self.path
        super().__init__(f"{shown}: {message}")


@dataclass(frozen=True)
class Dataset:
    """A dataset with its official (or seeded) train/test split.

    x_*: float32, images (n, C, H, W) in [0, 1] or tabular (n, d) standardised.
    y_*: int64 class ids in [0, num_classes).
    """

    name: str
    kind: Literal["image", "tabular"]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: tuple[float, ...] | None = None  # per-channel normalisation (images)
    std: tuple[float, ...] | None = None
    class_names: tuple[str, ...] = field(default=())

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if len(x) != len(y):
                raise ValueError(f"{self.name}: {split} has {len(x)} inputs and {len(y)} labels")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    kind: Literal["image", "tabular"]
    description: str
    # Paths relative to the data root; None for datasets shipped inside a package.
    folder: str | None
    expected: tuple[str, ...]
    loader: Callable[[Path | None], Dataset]
    # A dataset read from the user's own files: (path, test, label) -> Dataset.
    file_loader: Callable[[str, str | None, str | None], Dataset] | None = None


DATASETS: Registry[DatasetInfo] = Registry(
    "dataset", group="unlearn_audit.datasets",
    check=lambda obj: "" if isinstance(obj, DatasetInfo) else "expected a tasks.data.DatasetInfo")


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path | None:
    """The explicit root, else $UNLEARN_AUDIT_DATA, else ../shared/data beside the checkout."""
    if data_root:
        return Path(data_root).expanduser().resolve()
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser().resolve()
    beside = Path(__file__).resolve().parents[3] / "shared" / "data"
    return beside if beside.is_dir() else None


def dataset_folder(info: DatasetInfo, data_root: Path | None) -> Path:
    if data_root is None:
        raise MissingDataError(
            info.name, Path(f"<no data root>/{info.folder}"), list(info.expected)
        )
    return data_root / info.folder


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, root: str | None) -> Dataset:
    info = DATASETS.get(name)
    return info.loader(Path(root) if root else None)


def load_dataset(name: str, data_root: str | os.PathLike | None = None, *,
                 path: str | os.PathLike | None = None, test: str | os.PathLike | None = None,
                 label: str | None = None) -> Dataset:
    """Load a registered dataset (cached per process: workers reuse it across tasks).

    ``path``/``test``/``label`` name the user's own files and are read only by a dataset with
    a ``file_loader`` (``files``: :func:`tasks.data.files.load_files_dataset`); any other
    dataset refuses them."""
    info = DATASETS.get(name)
    if info.file_loader is not None:
        return info.file_loader(path, test, label)
    given = [k for k, v in (("path", path), ("test", test), ("label", label)) if v is not None]
    if given:
        raise ValueError(f"dataset {name!r} takes no {', '.join(given)}: only the 'files' "
                         "dataset reads the user's own files")
    root = resolve_data_root(data_root) if info.folder else None
    return _load_cached(name, str(root) if root else None)


def dataset_status(data_root: str | os.PathLike | None = None) -> list[dict]:
    """One row per dataset: name, kind, whether its files are present, and where."""
    root = resolve_data_root(data_root)
    rows = []
    for name in DATASETS:
        info = DATASETS.get(name)
        if info.folder is None:
            where = ("your files (dataset.path)" if info.file_loader is not None
                     else "bundled with scikit-learn")
            rows.append({"name": name, "kind": info.kind, "available": True,
                         "where": where, "description": info.description})
            continue
        folder = root / info.folder if root else None
        present = folder is not None and any(
            all((folder / f).exists() for f in alt.split(" + ")) for alt in info.expected
        )
        rows.append({"name": name, "kind": info.kind, "available": present,
                     "where": str(folder) if folder else "(no data root)",
                     "description": info.description})
    return rows


def seeded_split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic train/test split of range(n) for datasets without an official one."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = round(n * test_fraction)  # an int: round() of one argument
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale features with training statistics only (the test split must stay unseen)."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)
