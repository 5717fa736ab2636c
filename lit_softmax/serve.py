"""Serve a trained model over HTTP with LitServe: `python -m lit_softmax serve --config ... --ckpt_path best`.

    POST /predict  {"image": "<base64 of a PNG/JPEG/BMP/TIFF file>"}
                -> {"label": "Sandal", "index": 5, "probabilities": [10 floats, in class order]}
    GET  /         a page to try it: upload or draw a garment, see what the model sees and why
    GET  /health   200 once the model is loaded (LitServe's)

The HTTP side checks and decodes each request (lit_softmax/pixels.py: the preprocessing `predict
--data.predict_dir` uses, torch-free); a bad one is answered 4xx there, with one line saying why, and never
reaches the model. The model runs in LitServe's worker process as the checkpoint's verified ONNX graph
(onnxruntime, no torch), on dynamic batches of requests that arrive together.

Needs `pip install -e '.[serve]'` (litserve) and the `onnx` extra; the training code never imports this module.
"""

# No `from __future__ import annotations` here: LitServe reads decode_request's annotation (PredictRequest) as the
# request body's type, so it must be the class itself, not a string.
import base64
import binascii
import json
import os
import signal
from pathlib import Path
from typing import Any, Literal

import litserve as ls
import numpy as np
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, PrivateAttr, model_validator

from lit_softmax.errors import LitSoftmaxError
from lit_softmax.pixels import read_image

# A base64 photo of one garment fits easily; anything larger is refused (413) before it is read whole.
MAX_BODY_BYTES = 8 * 1024 * 1024


class BodyLimit:
    """Answers 413 to a body over `max_bytes`, after reading it to the end (answering mid-upload would reach the
    client as a reset connection, not an answer)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size, more = 0, True
        messages = []
        while more:  # the body, buffered up to the limit, counted (and dropped) beyond it
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
            if size <= self.max_bytes:
                messages.append(message)
        if size > self.max_bytes:
            detail = (
                f"the request body ({size:,} bytes) is over the {self.max_bytes:,}-byte limit: send a smaller image"
            )
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
            return
        replay = iter(messages)

        async def buffered():
            return next(replay, None) or await receive()

        await self.app(scope, buffered, send)


class ServerStopped(LitSoftmaxError):
    """Ctrl-C or SIGTERM: the server shut down cleanly."""

    prefix = ""

    def __init__(self, signum: int) -> None:
        super().__init__(f"server stopped by {signal.Signals(signum).name}")
        self.exit_code = 128 + signum


class PredictRequest(BaseModel):
    """One image. Validated on the HTTP side: what fails here is answered 422 and never reaches the model."""

    image: str  # base64 of the file's bytes (a `data:image/...;base64,` prefix is accepted too)
    invert: Literal["auto", "yes", "no"] = "auto"  # as `--data.invert`: auto inverts a light background
    return_input: bool = False  # also return the 28x28 pixels the model saw (the page shows them)
    _pixels: bytes = PrivateAttr(b"")

    @model_validator(mode="after")
    def decode(self) -> "PredictRequest":
        data = self.image.split(",", 1)[1] if self.image.startswith("data:") else self.image
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"`image` is not base64 ({e}); send the file's bytes base64-encoded") from None
        self._pixels = read_image(raw, self.invert).tobytes()  # ValueError: not an image, too large, ...
        return self

    def pixels(self) -> np.ndarray:
        """(28, 28) uint8: light garment on black, as in Fashion-MNIST."""
        return np.frombuffer(self._pixels, dtype=np.uint8).reshape(28, 28)


class FashionMNISTAPI(ls.LitAPI):
    """The model behind /predict: an onnxruntime session over model.onnx, one call per batch of requests."""

    def __init__(self, onnx_path: str, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.onnx_path = onnx_path

    def setup(self, device: str) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(self.onnx_path, providers=["CPUExecutionProvider"])
        self.classes = json.loads(self.session.get_modelmeta().custom_metadata_map["class_names"])

    def decode_request(self, request: PredictRequest) -> tuple[np.ndarray, bool]:
        return request.pixels(), request.return_input

    def batch(self, inputs: list) -> list:
        return list(inputs)  # stacked in predict, which also takes one request when batching is off

    def predict(self, x: Any) -> Any:
        items = x if isinstance(x, list) else [x]
        images = np.stack([pixels for pixels, _ in items]).astype(np.float32)[:, None] / np.float32(255)
        probabilities = self.session.run(["probabilities"], {"images": images})[0]
        out = [(p, pixels if wanted else None) for p, (pixels, wanted) in zip(probabilities, items)]
        return out if isinstance(x, list) else out[0]

    def unbatch(self, output: list) -> list:
        return output

    def encode_response(self, output: tuple[np.ndarray, np.ndarray | None]) -> dict[str, Any]:
        probabilities, pixels = output
        index = int(np.argmax(probabilities))
        response = {"label": self.classes[index], "index": index, "probabilities": probabilities.tolist()}
        if pixels is not None:
            response["input"] = pixels.tolist()
        return response


def weight_templates(model) -> np.ndarray:
    """(10, 784): how much each pixel (in [0, 1]) adds to each class's score. The model is linear, so its scores
    for the all-black image and for each single-pixel image give them exactly, whatever it folds inside
    (the per-pixel standardisation)."""
    import torch

    with torch.no_grad():
        model = model.eval().float().cpu()
        inputs = torch.cat([torch.zeros(1, 784), torch.eye(784)]).view(-1, 1, 28, 28)
        scores = model(inputs)
    return (scores[1:] - scores[:1]).T.numpy()


def onnx_for(model, datamodule, ckpt_path: Path) -> Path:
    """The checkpoint's model.onnx: the one beside it if it was exported from this checkpoint, else exported now
    (with `export`'s check against the model on the test split)."""
    onnx_path = ckpt_path.parent / "model.onnx"
    if onnx_path.is_file():
        import onnx

        metadata = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
        if metadata.get("checkpoint") == str(ckpt_path.resolve()):
            return onnx_path
    from lit_softmax.export import export_checkpoint

    return export_checkpoint(model, datamodule, ckpt_path, str(onnx_path), atol=1e-5)


def serve_checkpoint(model, datamodule, ckpt_path: Path, host: str, port: int, max_batch_size: int,
                     batch_timeout: float) -> None:  # fmt: skip
    """`python -m lit_softmax serve`: the checkpoint's model behind /predict and the page, until Ctrl-C/SIGTERM."""
    from lit_softmax.checkpoints import load_checkpoint_safely
    from lit_softmax.errors import ConfigError

    if host not in ("127.0.0.1", "0.0.0.0", "::"):
        raise ConfigError(f"--host {host}: use 127.0.0.1 (this machine only, the default) or 0.0.0.0 / :: (all).")
    if not 1024 <= port <= 65535:
        raise ConfigError(f"--port {port}: use a port from 1024 to 65535, e.g. 8000.")
    if max_batch_size < 1 or batch_timeout < 0:
        raise ConfigError(f"--max_batch_size must be >= 1 and --batch_timeout >= 0, got {max_batch_size}, "
                          f"{batch_timeout}.")  # fmt: skip
    model.load_state_dict(load_checkpoint_safely(ckpt_path)["state_dict"])
    onnx_path = onnx_for(model, datamodule, ckpt_path)
    templates = weight_templates(model)
    api = FashionMNISTAPI(str(onnx_path), max_batch_size, batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=30,
                          middlewares=[(BodyLimit, {"max_bytes": MAX_BODY_BYTES})])  # fmt: skip
    add_page(server, templates)

    stopped, main_pid = [], os.getpid()

    def stop(signum, frame) -> None:  # SIGTERM as Ctrl-C: LitServe shuts its workers down on KeyboardInterrupt
        if os.getpid() != main_pid:  # a forked HTTP server process (it inherits this handler): just end it
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        stopped.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    print(f"serving {ckpt_path} ({onnx_path.name}) on http://{host}:{port}/  (POST /predict, GET /health)",
          flush=True)  # fmt: skip
    try:
        server.run(host=host, port=port, generate_client_file=False, num_api_servers=1, log_level="warning",
                   api_server_worker_type="process")  # fmt: skip
    except KeyboardInterrupt:
        stopped.append(signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
    raise ServerStopped(stopped[0] if stopped else signal.SIGINT)


def add_page(server: ls.LitServer, templates: np.ndarray) -> None:
    """The page at /, the weight templates it draws, and one-line 422 answers for requests that fail validation."""
    from lit_softmax.fashion_mnist import CLASSES as classes
    from lit_softmax.page import PAGE

    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    async def weights() -> JSONResponse:
        return JSONResponse({"classes": list(classes), "templates": np.round(templates, 5).tolist()})

    async def refused(request: Request, error: RequestValidationError) -> JSONResponse:
        reasons = [e.get("msg", "").removeprefix("Value error, ") for e in error.errors()]
        where = [".".join(str(p) for p in e.get("loc", ())[1:] if isinstance(p, str)) for e in error.errors()]
        detail = "; ".join(f"{w}: {r}" if w else r for w, r in zip(where, reasons))
        return JSONResponse({"detail": detail}, status_code=422)

    # LitServe answers / with "litserve running": the page takes its place.
    server.app.router.routes = [r for r in server.app.router.routes if getattr(r, "path", None) != "/"]
    server.app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    server.app.add_api_route("/templates", weights, methods=["GET"])
    server.app.add_exception_handler(RequestValidationError, refused)
