"""Load benchmark of `python -m lit_softmax serve`: requests/s and latency at concurrency 1, 16 and 64 on loopback,
for several `--max_batch_size` settings, against in-process onnxruntime on the same images.

    python benchmarks/serve.py      # the best checkpoint of the newest configs/fashion_mnist.yaml run
    python benchmarks/serve.py --ckpt_path path/to/file.ckpt --batch_sizes 1,16,64 --requests 1000

Requests: POST /predict with a PNG of a real test image (base64 in JSON, ~1 KB), sent by client threads, each on
its own keep-alive connection, back to back. In-process: the same files through the same preprocessing
(lit_softmax/pixels.py) and the same model.onnx, one image per call and all images in one call. The client runs
on the same machine as the server and shares its CPUs: the figures are a floor for a separate client.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"


def test_pngs(data_dir: str | None, count: int) -> list[bytes]:
    sys.path.insert(0, str(REPO))
    from lit_softmax import FashionMNISTDataModule

    dm = FashionMNISTDataModule(**({"data_dir": data_dir} if data_dir else {}))
    dm.setup("test")
    files = []
    for image in dm.test_set.images[:count].numpy():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        files.append(buffer.getvalue())
    return files


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, max_batch_size: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "lit_softmax",
        "serve",
        "--config",
        args.config,
        "--ckpt_path",
        args.ckpt_path,
        "--port",
        str(port),
        "--max_batch_size",
        str(max_batch_size),
        "--batch_timeout",
        str(args.batch_timeout),
    ]
    if args.data_dir:
        command += ["--data.data_dir", args.data_dir]
    server = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and server.poll() is None:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return server, port
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit(f"the server did not start:\n{server.communicate()[0][-3000:]}")


def load(port: int, bodies: list[bytes], concurrency: int, requests: int) -> dict[str, float]:
    """`requests` POSTs from `concurrency` threads; requests/s and latency percentiles (ms)."""
    per_thread = max(1, requests // concurrency)

    def client(offset: int) -> list[float]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        latencies = []
        for i in range(per_thread):
            body = bodies[(offset * per_thread + i) % len(bodies)]
            started = time.perf_counter()
            connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"HTTP {response.status}")
            latencies.append(time.perf_counter() - started)
        connection.close()
        return latencies

    client(0)  # warm-up: connection, the worker's first batch
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = [t for part in pool.map(client, range(concurrency)) for t in part]
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"rps": len(latencies) / elapsed, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def in_process(onnx_path: Path, files: list[bytes]) -> dict[str, float]:
    """Images/s through the same preprocessing and model.onnx, without HTTP: one image per call, and one call."""
    import onnxruntime

    from lit_softmax.pixels import read_image

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def one(data: bytes) -> None:
        pixels = read_image(data)[None, None].astype(np.float32) / np.float32(255)
        session.run(["probabilities"], {"images": pixels})

    def batch() -> None:
        pixels = np.stack([read_image(d) for d in files])[:, None].astype(np.float32) / np.float32(255)
        session.run(["probabilities"], {"images": pixels})

    rates = {}
    for name, call, images in (("single", lambda: [one(d) for d in files], len(files)), ("batch", batch, len(files))):
        call()
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            call()
            timings.append(time.perf_counter() - started)
        rates[name] = images / statistics.median(timings)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/fashion_mnist.yaml")
    parser.add_argument("--ckpt_path", default="best")
    parser.add_argument("--data_dir", help="where Fashion-MNIST is (default: the config's)")
    parser.add_argument("--batch_sizes", default="1,16,64", help="--max_batch_size settings to compare")
    parser.add_argument("--batch_timeout", type=float, default=0.0)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--requests", type=int, default=1024, help="requests per measurement")
    args = parser.parse_args()

    files = test_pngs(args.data_dir, 512)
    bodies = [json.dumps({"image": base64.b64encode(f).decode()}).encode() for f in files]
    rows = []
    onnx_path = None
    for max_batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        server, port = start_server(args, max_batch_size)
        try:
            for concurrency in [int(c) for c in args.concurrency.split(",")]:
                result = load(port, bodies, concurrency, args.requests)
                rows.append({"max_batch_size": max_batch_size, "concurrency": concurrency, **result})
                print(f"max_batch_size {max_batch_size:3d}  concurrency {concurrency:3d}: {result['rps']:7.0f} req/s  "
                      f"p50 {result['p50']:6.1f} ms  p99 {result['p99']:6.1f} ms", flush=True)  # fmt: skip
        finally:
            server.terminate()
            output = server.communicate(timeout=60)[0]
        if onnx_path is None:
            served = [line for line in output.splitlines() if line.startswith("serving ")]
            onnx_path = REPO / Path(served[0].split()[1]).parent / "model.onnx"
    direct = in_process(onnx_path, files)
    print(f"in-process onnxruntime on the same {len(files)} files (decode + preprocess + model): "
          f"{direct['single']:.0f} images/s one per call, {direct['batch']:.0f} images/s in one call")  # fmt: skip
    print("\n| `--max_batch_size` | concurrency | requests/s | p50 latency | p99 latency |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['max_batch_size']} | {r['concurrency']} | {r['rps']:.0f} | {r['p50']:.1f} ms | {r['p99']:.1f} ms |"
        )
    OUT.mkdir(exist_ok=True)
    (OUT / "serve.json").write_text(json.dumps({"rows": rows, "in_process": direct}, indent=1))


if __name__ == "__main__":
    main()
