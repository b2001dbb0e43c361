"""Models to and from other tools: the book's Keras files read and imported as a run.

Imports everything below it (``train`` and ``use`` included); never ``cli``.
"""
