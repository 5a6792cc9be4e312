"""Spec sections that add attack, defence and analysis work to a run.

Each module registers a :class:`orchestrator.spec.StageEntry` under its section name. The core
stage (train originals, unlearn per request) lives in :mod:`orchestrator.plan`.
"""
