"""The floor: the same training in plain PyTorch, no framework. The whole dataset as one uint8 tensor on the
device, batches cut by index, same model, loss and optimizer.

    python benchmarks/bare_loop.py --data-dir data --epochs 10                     # the original script's recipe
    python benchmarks/bare_loop.py --data-dir data --epochs 40 --recipe default    # configs/fashion_mnist.yaml

`--recipe seed`: SGD lr 0.1, batch 64, [0, 1] pixels, all 60,000 training images, as the original script.
`--recipe default`: the tuned default as lit_softmax runs it: the same 55,000/5,000 train/val split, per-pixel
standardisation, SGD momentum 0.9, lr 0.4, L2 2e-3 on the weights, cosine decay per step, batch 2048, and the
validation split scored after every epoch, as `fit` does.
Prints the median epoch time (first epoch left out, as benchmarks/epoch_timer.py does for lit_softmax).
"""

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from lit_softmax.fashion_mnist import load_split
from lit_softmax.model import STD_FLOOR


def logits(model, x, mean, std):
    """Standardise and apply the layer, standardisation folded into the weights as lit_softmax's forward does."""
    weight = model.weight / std
    return F.linear(x, weight, model.bias - weight @ mean)


def accuracy(model, images, labels, mean, std) -> float:
    with torch.no_grad():
        x = images.reshape(len(images), -1).to(torch.float32).div_(255)
        return (logits(model, x, mean, std).argmax(1) == labels).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--recipe", choices=["seed", "default"], default="seed")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    x, y = (t.to(device) for t in load_split(args.data_dir, "train", download=False))
    x_test, y_test = (t.to(device) for t in load_split(args.data_dir, "test", download=False))
    model = torch.nn.Linear(784, 10).to(device)
    mean, std, batch = torch.zeros(784, device=device), torch.ones(784, device=device), 64
    if args.recipe == "seed":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler, validation = None, None
    else:
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(42)).to(device)  # the DataModule's split
        validation, x, y = (x[perm[:5000]], y[perm[:5000]]), x[perm[5000:]], y[perm[5000:]]
        std, mean = torch.std_mean(x.reshape(len(x), -1).to(torch.float32).div_(255), dim=0)
        std, batch = std + STD_FLOOR, 2048
        groups = [{"params": [model.weight], "weight_decay": 2e-3}, {"params": [model.bias], "weight_decay": 0.0}]
        optimizer = torch.optim.SGD(groups, lr=0.4, momentum=0.9)
        total = args.epochs * math.ceil(len(y) / batch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    x = x.reshape(len(x), -1)
    starts = []
    for epoch in range(args.epochs):
        starts.append(time.perf_counter())
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(42 + epoch)).to(device)
        for idx in order.split(batch):
            z = logits(model, x.index_select(0, idx).to(torch.float32).div_(255), mean, std)
            loss = F.cross_entropy(z, y.index_select(0, idx))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        if validation is not None:
            val_acc = accuracy(model, *validation, mean, std)  # .item(): waits for the device, as fit's logging does
        elif device.type == "cuda":
            torch.cuda.synchronize()
    starts.append(time.perf_counter())
    print(f"epoch_median={statistics.median(b - a for a, b in zip(starts[1:], starts[2:])):.4f}")
    if validation is not None:
        print(f"val_acc={val_acc:.4f}")
    print(f"test_acc={accuracy(model, x_test, y_test, mean, std):.4f}")


if __name__ == "__main__":
    main()
