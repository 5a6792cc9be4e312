"""The work itself: data, models, training, unlearning, attacks, defences and metrics.

Nothing here imports ``orchestrator``: every function runs and tests without Ray or Parquet.
"""

# Bump when a change to task code alters what a cached artifact would contain; it is part of
# every artifact key, so stale artifacts are never reused.
CODE_VERSION = "1"
