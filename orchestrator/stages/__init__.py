"""Spec sections that add attack, defence and analysis work to a run.

Each package here registers a :class:`orchestrator.spec.stage_registry.StageEntry` under
its section name (and its unit functions in ``orchestrator.engine.units.UNIT_FUNCTIONS``).
Every package here is imported on first use, so adding a stage is adding a folder. The core
stage (train originals, unlearn per request) lives in :mod:`orchestrator.engine.plan`.
"""

from __future__ import annotations

import importlib
import pkgutil

import orchestrator.reporting.summaries  # noqa: F401  (what run prints at the end)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
