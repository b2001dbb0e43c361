"""``charlm-jax serve``: an HTTP server that decodes concurrent requests as rows of shared compiled scans.

May import ``errors``, ``settings``, ``data``, ``runtime``, ``model``, ``io`` and ``use`` (docs/design.md).
"""
