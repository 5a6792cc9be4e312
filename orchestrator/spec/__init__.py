"""The audit spec: the YAML schema, key paths and overrides, hashing, the stage registry,
and the spec's own folder (paths and code beside it).
"""
