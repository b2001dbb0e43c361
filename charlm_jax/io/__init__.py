"""Files of this project's own format: orbax checkpoints with their metadata (config, vocabulary, text record).

Imports ``errors``, ``settings``, ``data``, ``runtime`` and ``model`` only.
"""
