"""Softmax regression on Fashion-MNIST with PyTorch Lightning."""

from lit_softmax.data import CLASSES, FashionMNISTDataModule
from lit_softmax.model import SoftmaxRegression

__all__ = ["CLASSES", "FashionMNISTDataModule", "SoftmaxRegression"]
