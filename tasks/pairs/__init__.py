"""A user's model pair: theta (original) and theta_u (unlearned), loaded from one of
:data:`FORMATS` and checked against the dataset.

White-box formats (``torch_state_dict``, ``torch_export``) give the real modules; query formats
(``skops``, ``onnx``) give adapters that can be run on any input; ``posteriors`` gives only the
stored class probabilities of chosen records. Lives in tasks/: no orchestrator imports.
"""

from __future__ import annotations

from tasks.pairs.base import FORMATS, QUERY, WHITE_BOX, PairError, PairSide, UserPair
from tasks.pairs.loading import load_pair

__all__ = ["FORMATS", "QUERY", "WHITE_BOX", "PairError", "PairSide", "UserPair", "load_pair"]
