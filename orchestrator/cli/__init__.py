"""The ``unlearn-audit`` command: argument parsing, one-line refusals, the run driver.
"""
