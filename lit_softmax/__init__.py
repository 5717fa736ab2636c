"""Softmax regression on Fashion-MNIST with PyTorch Lightning."""

from lit_softmax.data import FashionMNISTDataModule
from lit_softmax.fashion_mnist import CLASSES
from lit_softmax.model import SoftmaxRegression

__all__ = ["CLASSES", "FashionMNISTDataModule", "SoftmaxRegression"]
