"""What a person reads: `show`, the HTML report, verdict wording, tables' summaries and
figures.
"""
