"""The model: the LSTM layer and its hand-derived backward, CharLSTM, compute dtype, and the loss/metric.

Imports ``errors``, ``settings``, ``data`` and ``runtime`` only.
"""
