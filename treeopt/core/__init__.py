"""Core data types: trees, acceptance profiles, rank sequences, latency tables, curves.

Pure Python + numpy; everything else in treeopt builds on these.
"""
