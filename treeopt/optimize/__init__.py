"""The optimizer: models of acceptance, replayed decoding, the tree builder, the tuner.

Pure: numpy only.
"""
