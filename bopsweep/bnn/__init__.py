"""Binarized neural networks: quantizers, layers, the Bop optimizer and models.

This package is pure PyTorch: it never imports Ray or MLflow, so it can be used
on its own (``from bopsweep.bnn.optim import Bop``).
"""
