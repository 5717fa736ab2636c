"""The original plain-PyTorch script (../shared/seed), kept faithful: torchvision FashionMNIST + ToTensor +
DataLoader(batch 64, shuffle), nn.Linear(784, 10), CrossEntropyLoss, SGD(lr=0.1). Only changes: the data
root is an argument (no download here), the epoch count is an argument, and the per-100-step print is dropped.

    python benchmarks/seed_script.py --data-dir data --epochs 10
"""

import argparse

import torch
import torch.nn as nn
import torch.optim as optim
from torch.utils.data import DataLoader
from torchvision.datasets import FashionMNIST
from torchvision.transforms import ToTensor


class SoftmaxRegression(nn.Module):
    def __init__(self, input_size, output_size):
        super().__init__()
        self.linear = nn.Linear(input_size, output_size)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        return self.linear(x)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    train_data = FashionMNIST(root=args.data_dir, train=True, transform=ToTensor(), download=False)
    test_data = FashionMNIST(root=args.data_dir, train=False, transform=ToTensor(), download=False)
    model = SoftmaxRegression(784, 10)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(model.parameters(), lr=0.1)
    train_loader = DataLoader(train_data, batch_size=64, shuffle=True)
    test_loader = DataLoader(test_data, batch_size=64, shuffle=False)
    for _ in range(args.epochs):
        for images, labels in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        correct = total = 0
        for images, labels in test_loader:
            predicted = model(images).argmax(1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    print(f"test_acc={correct / total:.4f}")


if __name__ == "__main__":
    main()
