"""Content hashes of plain data (JSON-able), the keys of artifacts, units and table parts.

Apart from :mod:`orchestrator.spec.schema` so that reading tables (``show``, ``report``) needs no
torch: the spec module imports the model registry."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_hash(obj: Any, length: int = 16) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
