"""`serve`: a real server process (LitServe) on a free 127.0.0.1 port, over a checkpoint of the session's trained
run. Its answers equal `predict`'s for the same files; bad requests are 4xx with one line and the server keeps
serving; the page works in headless Chromium; SIGTERM and Ctrl-C stop it cleanly."""

from __future__ import annotations

import base64
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from io import BytesIO
from pathlib import Path

import pytest
import torch
from conftest import REPO, TEST_ENV, error_of, real_data, run_cli
from PIL import Image
from servers import free_port
from test_predict import render_test_images

from lit_softmax import FashionMNISTDataModule, SoftmaxRegression
from lit_softmax.images import load_image_folder

CONFIG = str(REPO / "configs/fashion_mnist.yaml")


class Server:
    def __init__(self, where: Path, checkpoint: Path, data_dir: str) -> None:
        self.where, self.port = where, free_port()
        command = [sys.executable, "-m", "lit_softmax", "serve", "--config", CONFIG, "--ckpt_path", str(checkpoint),
                   "--data.data_dir", data_dir, "--port", str(self.port)]  # fmt: skip
        self.process = subprocess.Popen(command, cwd=where, env=TEST_ENV, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.process.kill()
        raise AssertionError(f"the server did not become ready:\n{self.process.communicate()[0][-3000:]}")

    def get(self, path: str) -> tuple[int, bytes]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as response:
            return response.status, response.read()

    def post(self, body: bytes) -> tuple[int, dict]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/predict", data=body,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def predict(self, image: bytes, **options) -> dict:
        status, answer = self.post(json.dumps({"image": base64.b64encode(image).decode(), **options}).encode())
        assert status == 200, answer
        return answer

    def stop(self, signum: int) -> tuple[int, str]:
        os.kill(self.process.pid, signum)
        output = self.process.communicate(timeout=60)[0]
        return self.process.returncode, output


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """60 test images as PNG/JPEG/BMP files (some inverted, as photos on a light background) and 4 as TIFF."""
    where = tmp_path_factory.mktemp("photos")
    dm = FashionMNISTDataModule(data_dir=real_data(where))
    dm.setup("test")
    truth = render_test_images(where / "photos", dm.test_set.images[:60], dm.test_set.labels[:60])
    for i in range(60, 64):
        Image.fromarray(dm.test_set.images[i].numpy()).save(where / "photos" / f"{i:03d}.tiff")
        truth[f"{i:03d}.tiff"] = int(dm.test_set.labels[i])
    return where / "photos", truth


@pytest.fixture(scope="module")
def server(default_run: Path, tmp_path_factory: pytest.TempPathFactory):
    where = tmp_path_factory.mktemp("serve")
    best = next(p for p in (default_run / "checkpoints").iterdir() if p.suffix == ".ckpt" and p.name != "last.ckpt")
    checkpoint = where / "checkpoints" / best.name  # a copy: model.onnx is exported next to it
    checkpoint.parent.mkdir()
    shutil.copy(best, checkpoint)
    running = Server(where, checkpoint, real_data(where))
    yield running
    if running.process.poll() is None:
        running.process.kill()


@pytest.mark.slow
def test_served_predictions_equal_predict_on_the_same_files(server: Server, photos, tmp_path: Path) -> None:
    folder, truth = photos
    checkpoint = next(server.where.glob("checkpoints/*.ckpt"))
    out = run_cli("predict", "--config", CONFIG, "--ckpt_path", str(checkpoint), "--data.data_dir",
                  real_data(tmp_path), "--data.predict_dir", str(folder), cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    with open(next(tmp_path.glob("logs/*/version_*/predictions.csv")), newline="") as f:
        rows = {r["file"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(truth)
    # predict's own numbers, unrounded: the model on the pixels predict reads from each file
    pictures, names, _, failures = load_image_folder(folder)
    assert not failures
    model = SoftmaxRegression.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    with torch.no_grad():
        exact = dict(zip(names, model(pictures.float().div(255).unsqueeze(1)).softmax(1).tolist()))
    worst_csv = worst = 0.0
    for name in truth:
        answer = server.predict((folder / name).read_bytes())
        assert answer["label"] == rows[name]["predicted"], name
        classes = [c.removeprefix("p_") for c in rows[name] if c.startswith("p_")]
        assert answer["index"] == classes.index(answer["label"])
        csv_row = [float(rows[name][f"p_{c}"]) for c in classes]
        worst_csv = max(worst_csv, max(abs(a - b) for a, b in zip(answer["probabilities"], csv_row)))
        worst = max(worst, max(abs(a - b) for a, b in zip(answer["probabilities"], exact[name])))
    print(f"\n{len(truth)} files: same class; probabilities within {worst:.1e} of predict's, {worst_csv:.1e} of its "
          "CSV (6 decimals)")  # fmt: skip
    assert worst <= 1e-6
    assert worst_csv <= 1e-6 + 5e-7  # the CSV's rounding on top


@pytest.mark.slow
def test_bad_requests_are_4xx_with_one_line_and_the_server_keeps_serving(server: Server, photos) -> None:
    folder, truth = photos
    good = (folder / next(iter(truth))).read_bytes()
    bomb = BytesIO()
    Image.new("L", (10_000, 5_000)).save(bomb, "PNG")  # 48 KB of PNG, 50 megapixels decoded
    gif = BytesIO()
    Image.new("L", (28, 28)).save(gif, "GIF")
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    cases = {
        "not JSON": (b"image=abc", 422, "JSON decode error"),
        "no image": (b'{"picture": "abc"}', 422, "image: Field required"),
        "bad base64": (json.dumps({"image": "not*base64"}).encode(), 422, "`image` is not base64"),
        "not an image": (json.dumps({"image": b64(b"hello, world")}).encode(), 422, "not a PNG/JPEG/BMP/TIFF image"),
        "another format": (json.dumps({"image": b64(gif.getvalue())}).encode(), 422, "not a PNG/JPEG/BMP/TIFF"),
        "bomb": (json.dumps({"image": b64(bomb.getvalue())}).encode(), 422, "decompression bomb guard"),
        "bad option": (json.dumps({"image": b64(good), "invert": "maybe"}).encode(), 422, "invert: Input should be"),
        "too large": (b'{"image": "' + b"A" * (9 << 20) + b'"}', 413, "over the 8,388,608-byte limit"),
    }
    for case, (body, status, reason) in cases.items():
        got, answer = server.post(body)
        assert got == status, (case, answer)
        assert reason in answer["detail"], (case, answer)
        assert "\n" not in answer["detail"]
        assert server.predict(good)["label"]  # still serving
    assert server.process.poll() is None


@pytest.mark.slow
def test_health_page_and_no_files_in_the_working_directory(server: Server) -> None:
    assert server.get("/health") == (200, b"ok")
    status, page = server.get("/")
    assert status == 200
    assert b'id="file"' in page and b'id="label"' in page  # noqa: PT018
    status, body = server.get("/templates")
    templates = json.loads(body)
    assert len(templates["classes"]) == 10
    assert len(templates["templates"]) == 10 and len(templates["templates"][0]) == 784  # noqa: PT018
    assert sorted(p.name for p in server.where.iterdir()) == ["checkpoints", "data"]  # no client.py, no logs/
    # The model's worker process (spawned by LitServe) runs without torch: pixels.py and onnxruntime only.
    workers = [
        pid for pid in descendants(server.process.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert workers
    assert all("libtorch" not in Path(f"/proc/{pid}/maps").read_text() for pid in workers)


def descendants(pid: int) -> list[int]:
    parents = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = next(line for line in status.read_text().splitlines() if line.startswith("PPid:"))
        except (OSError, StopIteration):
            continue
        parents[int(status.parent.name)] = int(ppid.split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


@pytest.mark.slow
def test_the_page_in_headless_chromium_shows_the_apis_answer(server: Server, photos, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium not found: `make chromium` (or apt-get install chromium) installs it"
    folder, truth = photos
    names = sorted(truth)[:3]
    with sync_playwright() as p:
        flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=flags)
        page = browser.new_page(viewport={"width": 1100, "height": 820})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"http://127.0.0.1:{server.port}/")
        page.wait_for_selector("#bars .bar-row")  # the class list came from /templates
        for name in names:
            page.set_input_files("#file", str(folder / name))
            expected = server.predict((folder / name).read_bytes())["label"]
            page.wait_for_function("(want) => document.querySelector('#label').textContent === want", arg=expected)
            assert page.inner_text("#template-label") == expected
            best = page.inner_text("#bars .best")
            assert best.startswith(expected)
        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()
    assert not errors


@pytest.mark.slow
def test_sigterm_stops_the_server_cleanly(server: Server) -> None:
    """The module's last test: the server gets SIGTERM (Docker, Kubernetes, systemd) and ends with 143."""
    code, output = server.stop(signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, output[-3000:]
    assert "server stopped by SIGTERM" in output
    assert "Traceback" not in output
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        server.get("/health")


@pytest.mark.slow
def test_ctrl_c_stops_the_server_cleanly(default_run: Path, tmp_path: Path) -> None:
    best = next(p for p in (default_run / "checkpoints").iterdir() if p.suffix == ".ckpt" and p.name != "last.ckpt")
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(best, tmp_path / "checkpoints" / best.name)
    running = Server(tmp_path, tmp_path / "checkpoints" / best.name, real_data(tmp_path))
    code, output = running.stop(signal.SIGINT)
    assert code == 128 + signal.SIGINT, output[-3000:]
    assert "server stopped by SIGINT" in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--host", "10.1.2.3"], "--host 10.1.2.3: use 127.0.0.1 (this machine only, the default) or 0.0.0.0"),
        (["--port", "80"], "--port 80: use a port from 1024 to 65535"),
        (["--max_batch_size", "0"], "--max_batch_size must be >= 1 and --batch_timeout >= 0, got 0, 0.0"),
        (["--batch_timeout", "-1"], "--max_batch_size must be >= 1 and --batch_timeout >= 0, got 16, -1.0"),
        (["--ckpt_path", "nope.ckpt"], "checkpoint nope.ckpt does not exist"),
    ],
    ids=["host", "port", "batch-size", "batch-timeout", "checkpoint"],
)
def test_bad_serve_options_are_one_message_before_anything_is_written(cli, capsys, flags, message) -> None:
    cli("--trainer.max_epochs", "1")
    assert message in error_of(capsys, cli, "--ckpt_path", "last", *flags, subcommand="serve")
    assert not list(Path.cwd().rglob("model.onnx"))  # refused before the export
