"""How work is described (spec), planned (plan), run on Ray (execute) and stored (tables)."""
