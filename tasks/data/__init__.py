"""Dataset registry: every dataset is loaded into one :class:`Dataset` shape.

Images are float32 in [0, 1], shaped (n, C, H, W); the model's first layer normalises them with
``Dataset.mean``/``std``. Tabular features are label-encoded and standardised with statistics of
the training split. Files are read from a data root (``--data-root`` or ``UNLEARN_AUDIT_DATA``).
The ``files`` dataset reads the user's own files instead, as they are (:mod:`tasks.data.files`).
"""

from __future__ import annotations

from tasks.data import files as _files  # noqa: F401  ('files'; it imports loaders first)
from tasks.data import loaders as _loaders  # noqa: F401  (fills the registry)
from tasks.data.base import (
    DATA_ROOT_ENV,
    DATASETS,
    DataError,
    Dataset,
    DatasetInfo,
    MissingDataError,
    dataset_status,
    load_dataset,
    resolve_data_root,
)

__all__ = [
    "DATASETS",
    "DATA_ROOT_ENV",
    "DataError",
    "Dataset",
    "DatasetInfo",
    "MissingDataError",
    "dataset_status",
    "load_dataset",
    "resolve_data_root",
]
