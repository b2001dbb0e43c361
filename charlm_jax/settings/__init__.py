"""Settings: the frozen values a user sets (TrainConfig, GenerationOptions, AdaptOptions, the recipes).

Imports only ``charlm_jax.errors``, and never JAX (``charlm-jax --help`` reads these without starting it).
"""
