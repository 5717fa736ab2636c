"""The floor for the original recipe: the whole dataset as one tensor, batches cut by index, same model, loss,
optimizer and batch size as benchmarks/seed_script.py, no framework.

    python benchmarks/bare_loop.py --data-dir data --epochs 10
"""

import argparse

import torch
import torch.nn.functional as F

from lit_softmax.data import FILES, locate_raw_files, read_idx


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    paths = locate_raw_files(args.data_dir, download=False)
    x = read_idx(paths["train_images"], FILES["train_images"]).reshape(-1, 784).float().div_(255)
    y = read_idx(paths["train_labels"], FILES["train_labels"]).long()
    x_test = read_idx(paths["test_images"], FILES["test_images"]).reshape(-1, 784).float().div_(255)
    y_test = read_idx(paths["test_labels"], FILES["test_labels"]).long()
    model = torch.nn.Linear(784, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(args.epochs):
        for idx in torch.randperm(len(x)).split(64):
            loss = F.cross_entropy(model(x.index_select(0, idx)), y.index_select(0, idx))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    print(f"test_acc={accuracy:.4f}")


if __name__ == "__main__":
    main()
