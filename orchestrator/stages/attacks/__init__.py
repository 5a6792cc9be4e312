"""The ``attacks`` stage (any registered attack on every model pair) and its shorthands,
``recovery`` and ``label_inference``."""

from orchestrator.stages.attacks import label_inference, planning, recovery, units  # noqa: F401  (register)
