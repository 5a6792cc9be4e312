"""The engine: planning a spec into units, executing them on Ray (the session `run` and
`tune` share), locks and capacity checks, and the core worker units.
"""
