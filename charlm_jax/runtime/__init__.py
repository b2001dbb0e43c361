"""Where and how JAX runs: devices, meshes and row/batch sharding, host transfers, and seeds made keys.

Imports ``errors``, ``settings`` and ``data`` only.
"""
