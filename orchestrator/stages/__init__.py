"""Spec sections that add attack, defence and analysis work to a run.

Each module in this package registers a :class:`orchestrator.spec.StageEntry` under its section
name (and its unit functions in ``orchestrator.units.UNIT_FUNCTIONS``). Every module here is
imported on first use, so adding a stage is adding a file. The core stage (train originals,
unlearn per request) lives in :mod:`orchestrator.plan`.
"""

from __future__ import annotations

import importlib
import pkgutil

import orchestrator.summaries  # noqa: F401  (what run prints at the end)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
