"""Inference throughput of one trained model: PyTorch eager vs onnxruntime, at batch 1 and batch 1,024.

    python benchmarks/inference.py                          # best checkpoint of the newest logs/fashion_mnist run
    python benchmarks/inference.py --ckpt path/to/file.ckpt

Both run on the CPU on the real test images, float32 in [0, 1], returning probabilities (what the exported graph
returns). PyTorch: the LightningModule's forward + softmax under `torch.inference_mode()`. onnxruntime: the graph
`export` writes (made in memory here, the same function), CPUExecutionProvider, default threads. Each cell is
the median of 5 timings of at least 0.5 s of back-to-back calls.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"


def throughput(call, batch: int) -> float:
    """Images per second: median of 5 timings, each of at least 0.5 s of calls."""
    call()  # warm-up (allocations, thread pools)
    rates = []
    for _ in range(5):
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < 0.5:
            call()
            n += 1
        rates.append(n * batch / elapsed)
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="a .ckpt file (default: best of the newest logs/fashion_mnist run)")
    parser.add_argument("--data-dir", default=str(REPO / "data"))
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    import onnxruntime as ort

    from lit_softmax import SoftmaxRegression
    from lit_softmax.checkpoints import load_checkpoint_safely
    from lit_softmax.export import to_onnx_bytes
    from lit_softmax.fashion_mnist import load_split
    from lit_softmax.run import find_run_checkpoint

    ckpt = Path(args.ckpt) if args.ckpt else find_run_checkpoint(REPO / "logs" / "fashion_mnist", "best")
    state = load_checkpoint_safely(ckpt)
    model = SoftmaxRegression(**{k: v for k, v in state["hyper_parameters"].items() if not k.startswith("_")})
    model.load_state_dict(state["state_dict"])
    model.eval()
    session = ort.InferenceSession(to_onnx_bytes(model), providers=["CPUExecutionProvider"])
    images = load_split(args.data_dir, "test")[0][:1024].float().div(255).unsqueeze(1)  # (1024, 1, 28, 28)

    lines = [
        f"Inference, {ckpt.name}: images/s (median of 5), CPU, {torch.get_num_threads()} torch threads; "
        f"torch {torch.__version__}, onnxruntime {ort.__version__}",
        "",
        "| batch | PyTorch eager | onnxruntime | onnxruntime / PyTorch |",
        "| --- | --- | --- | --- |",
    ]
    for batch in (1, 1024):
        x = images[:batch]
        x_np = x.numpy()

        def eager(x=x):
            with torch.inference_mode():
                return model(x).softmax(-1)

        def onnx(x_np=x_np):
            return session.run(["probabilities"], {"images": x_np})

        t, o = throughput(eager, batch), throughput(onnx, batch)
        lines.append(f"| {batch} | {t:,.0f} | {o:,.0f} | {o / t:.2f}x |")
        print(lines[-1], flush=True)
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "inference.md").write_text(report)


if __name__ == "__main__":
    main()
