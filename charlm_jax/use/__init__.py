"""Using a trained model: sampling, the compiled generation scan, dynamic evaluation, and LanguageModel with
load / generate / stream / score.

Imports everything below it (``errors``, ``settings``, ``data``, ``runtime``, ``model``, ``io``); never ``train``.
"""
