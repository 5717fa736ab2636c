"""ONNX export of a trained model, verified with onnxruntime before anything is written.

python -m lit_softmax export --config configs/fashion_mnist.yaml --ckpt_path best   # -> <checkpoints>/model.onnx

The graph: input `images`, float32 (B, 1, 28, 28) with pixels in [0, 1] (what torchvision's ToTensor and this
project's `predict` give; divide uint8 pixels by 255), light garment on a black background as in Fashion-MNIST;
any batch size. Output `probabilities`, float32 (B, 10), softmax over the classes in `CLASSES` order. The
per-pixel standardisation is inside the graph (folded into the linear layer, as in `SoftmaxRegression.forward`).

Needs `pip install -e '.[onnx]'` (onnx, onnxruntime); the training code never imports this module.
"""

from __future__ import annotations

import copy
import inspect
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lit_softmax.checkpoints import atomic_write_bytes, load_checkpoint_safely
from lit_softmax.errors import ConfigError, LitSoftmaxError
from lit_softmax.fashion_mnist import CLASSES

OPSET = 17  # onnxruntime >= 1.14 runs it; nothing newer is needed for Gemm + Softmax


class ExportError(LitSoftmaxError, RuntimeError):
    """The exported graph does not compute what the PyTorch model computes (nothing was written)."""


class Probabilities(nn.Module):
    """The model plus the softmax that `predict_step` applies: what a deployed classifier returns."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images).softmax(dim=-1)


@dataclass
class Verification:
    images: int
    argmax_mismatches: int  # images whose class differs from float64's where float32 rounding cannot explain it
    max_abs_diff: float  # onnxruntime vs float64, largest probability difference
    torch_diff: float  # PyTorch float32 vs float64: what float32 rounding alone does to this model
    allowed: float
    torch_acc: float
    onnx_acc: float


def to_onnx_bytes(model: nn.Module) -> bytes:
    """The model (eval mode, float32, CPU) as ONNX bytes with a dynamic batch dimension."""
    wrapper = Probabilities(model).eval().float().cpu()
    buffer = io.BytesIO()
    # The TorchScript-based exporter: the same graph on every torch this project supports (2.3 has no `dynamo`
    # argument; newer torch defaults to the dynamo exporter, which needs onnxscript as well).
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer notes that forward()'s shape check becomes a constant: true for every (B, 1, 28, 28) input.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            wrapper, (torch.zeros(1, 1, 28, 28),), buffer, input_names=["images"], output_names=["probabilities"],
            dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}}, opset_version=OPSET, **legacy,
        )  # fmt: skip
    return buffer.getvalue()


def add_metadata(onnx_bytes: bytes, metadata: dict[str, str]) -> bytes:
    import onnx

    proto = onnx.load_from_string(onnx_bytes)
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def session(onnx_bytes: bytes):
    import onnxruntime

    return onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])


# onnxruntime and PyTorch both compute in float32, with different kernels (summation order, fused multiply-add):
# each is a float32 rounding of the exact result. Both are compared with the model computed in float64, and
# onnxruntime may be off by this many times what PyTorch's own float32 rounding is off for this model (or `atol`,
# whichever is larger). Measured: onnxruntime's error is 1.6-2.0x PyTorch's on the debug, seed and bf16 models,
# while a graph with one bias changed by 1e-3 is ~60x off.
ROUNDING_FACTOR = 8


def verify(onnx_bytes: bytes, model: nn.Module, images: Tensor, labels: Tensor, atol: float = 1e-5) -> Verification:
    """Run onnxruntime, PyTorch float32 and PyTorch float64 on the same uint8 (N, 28, 28) images; compare."""
    x = images.cpu().float().div(255).unsqueeze(1)  # (N, 1, 28, 28) in [0, 1], as documented for the graph
    with torch.no_grad():
        exact = Probabilities(copy.deepcopy(model)).eval().double().cpu()(x.double()).numpy()
        float32 = Probabilities(model).eval().float().cpu()(x).numpy()
    got = session(onnx_bytes).run(["probabilities"], {"images": x.numpy()})[0].astype(np.float64)
    torch_diff = float(np.abs(float32 - exact).max())
    allowed = max(atol, ROUNDING_FACTOR * torch_diff)
    # A class may flip only where float64's two best probabilities are closer than the rounding allowed.
    top2 = np.sort(exact, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * allowed
    y = labels.cpu().numpy()
    result = Verification(
        images=len(y),
        argmax_mismatches=int(((got.argmax(1) != exact.argmax(1)) & clear).sum()),
        max_abs_diff=float(np.abs(got - exact).max()),
        torch_diff=torch_diff,
        allowed=allowed,
        torch_acc=float((float32.argmax(1) == y).mean()),
        onnx_acc=float((got.argmax(1) == y).mean()),
    )
    if result.argmax_mismatches or result.max_abs_diff > allowed:
        raise ExportError(
            f"the ONNX graph does not match the PyTorch model on the {result.images} test images: compared with the "
            f"model computed in float64, onnxruntime's probabilities are up to {result.max_abs_diff:.2e} off, while "
            f"PyTorch's own float32 rounding is {torch_diff:.2e} off (allowed: {allowed:.2e}, the larger of "
            f"--atol {atol:g} and {ROUNDING_FACTOR}x PyTorch's); {result.argmax_mismatches} images get another class "
            "where rounding cannot explain it. The graph computes something else than the checkpoint: nothing was "
            "written."
        )
    return result


def export(model: nn.Module, dest: Path, images: Tensor, labels: Tensor, metadata: dict[str, str],
           atol: float = 1e-5) -> Verification:  # fmt: skip
    """Export, verify the final file's bytes on (images, labels), then write `dest` atomically: a failed check
    (or a failed write) leaves no `dest` behind, and an earlier one as it was."""
    with torch.no_grad():
        predicted = model.eval().float().cpu()(images.cpu().float().div(255).unsqueeze(1)).argmax(1)
    onnx_bytes = add_metadata(to_onnx_bytes(model), {
        "class_names": json.dumps(list(CLASSES)),
        "input": "images: float32 (batch, 1, 28, 28), pixels in [0, 1], light garment on black",
        "output": "probabilities: float32 (batch, 10), softmax over class_names",
        "test_acc": f"{(predicted == labels.cpu()).float().mean().item():.4f}",
        **metadata,
    })  # fmt: skip
    result = verify(onnx_bytes, model, images, labels, atol)
    atomic_write_bytes(onnx_bytes, dest)
    return result


def export_checkpoint(model: nn.Module, datamodule, ckpt_path: Path, output: str | None, atol: float) -> Path:
    """`python -m lit_softmax export`: the checkpoint's weights into `model`, exported, verified on the test split
    of `datamodule`, written to `output` (default: model.onnx next to the checkpoint)."""
    if not atol > 0:
        raise ConfigError(f"--atol must be > 0, got {atol}; e.g. 1e-5.")
    import onnx  # noqa: F401  (here, so a missing `onnx` extra is said before any work)
    import onnxruntime  # noqa: F401

    checkpoint = load_checkpoint_safely(ckpt_path)
    model.load_state_dict(checkpoint["state_dict"])
    datamodule.prepare_data()
    datamodule.setup("test")
    dest = Path(output).expanduser() if output else ckpt_path.parent / "model.onnx"
    if dest.is_dir():
        raise ConfigError(
            f"--output {output} is a directory: give the file to write, e.g. `--output {dest / 'model.onnx'}`."
        )
    scores = [s.get("current_score") for s in checkpoint.get("callbacks", {}).values() if isinstance(s, dict)]
    val_acc = next((float(s) for s in scores if s is not None), None)
    metadata = {
        "checkpoint": str(ckpt_path.resolve()),
        "epoch": str(checkpoint.get("epoch")),
        "global_step": str(checkpoint.get("global_step")),
        "val_acc": "unknown" if val_acc is None else f"{val_acc:.4f}",
    }
    test = datamodule.test_set
    result = export(model, dest, test.images, test.labels, metadata, atol)
    rank_zero_info(
        f"wrote {dest}: onnxruntime on the {result.images} test images: same class for every image, "
        f"probabilities within {result.max_abs_diff:.1e} of the model in float64 (PyTorch float32: "
        f"{result.torch_diff:.1e}; allowed {result.allowed:.1e}), accuracy {result.onnx_acc:.4f} "
        f"(val_acc of the checkpoint: {metadata['val_acc']})."
    )
    return dest
