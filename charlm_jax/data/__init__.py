"""Data in: a text read (corpus), its vocabulary and windows, prepared memory-mapped corpora, the record of a
run's text.

Imports ``errors`` and ``settings`` only.
"""
