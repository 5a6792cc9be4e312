"""The engine above ``tasks``: a spec (``spec/``) is planned into units (``engine/``), run on Ray
by the stages that registered them (``stages/``, ``search/`` for ``tune``), stored as Parquet
tables and artifacts (``store/``) and read back by people (``reporting/``); ``cli/`` is the
command and ``context.TaskContext`` the value every unit carries. docs/ARCHITECTURE.md draws it."""
