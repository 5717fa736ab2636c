"""Softmax regression on Fashion-MNIST with PyTorch Lightning."""

from __future__ import annotations

import importlib

# Loaded on first use (PEP 562): `import lit_softmax.pixels` (the model server's processes) stays torch-free.
_EXPORTS = {"CLASSES": "fashion_mnist", "FashionMNISTDataModule": "data", "SoftmaxRegression": "model"}

__all__ = ["CLASSES", "FashionMNISTDataModule", "SoftmaxRegression"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"lit_softmax.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'lit_softmax' has no attribute {name!r}")
