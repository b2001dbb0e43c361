"""Training a run: the jitted steps, weight averaging, the run directory and its lock, signals, reports, the
event log, and ``fit``.

Imports everything below it, ``use`` included (the per-epoch samples); never ``interop`` or ``cli``.
"""
