"""`export`: ONNX that computes what the checkpoint computes (checked here with onnxruntime against the PyTorch
model rebuilt from the checkpoint), the README's onnxruntime-only snippet, and the bad inputs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import REPO, error_of, need_real_data, real_data, run_cli
from PIL import Image

from lit_softmax import SoftmaxRegression, export
from lit_softmax.fashion_mnist import CLASSES, load_split

RUN = Path("logs/debug/version_0")


def rebuilt(ckpt: Path) -> SoftmaxRegression:
    """The PyTorch model from the checkpoint's own hyper-parameters and weights."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    hparams = {k: v for k, v in state["hyper_parameters"].items() if not k.startswith("_")}
    model = SoftmaxRegression(**hparams)
    model.load_state_dict(state["state_dict"])
    return model.eval()


def compare(onnx_path: Path, model: SoftmaxRegression, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Same class for every image, probabilities within 1e-5, same accuracy; batch 1 works too. Returns acc."""
    x = images.float().div(255).unsqueeze(1)
    with torch.no_grad():
        expected = model(x).softmax(-1).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"images": x.numpy()})[0]
    assert got.shape == (len(labels), 10)
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert np.abs(got - expected).max() <= 1e-5
    one = session.run(["probabilities"], {"images": x[:1].numpy()})[0]  # the batch dimension is dynamic
    np.testing.assert_allclose(one, got[:1], atol=1e-6)
    acc = float((got.argmax(1) == labels.numpy()).mean())
    assert acc == float((expected.argmax(1) == labels.numpy()).mean())
    return acc


@pytest.mark.slow
def test_export_of_the_default_model_matches_pytorch_on_every_test_image(default_run: Path) -> None:
    cwd = default_run.parents[2]
    out = run_cli("export", "--config", str(REPO / "configs/fashion_mnist.yaml"), "--ckpt_path", "best",
                  "--data.data_dir", str(cwd / "data"), cwd=cwd)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    best = next((default_run / "checkpoints").glob("epoch*.ckpt"))
    onnx_path = best.parent / "model.onnx"
    assert "same class for every image" in out.stdout + out.stderr
    images, labels = load_split(str(cwd / "data"), "test", download=False)
    acc = compare(onnx_path, rebuilt(best), images, labels)
    assert acc > 0.84
    meta = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).get_modelmeta()
    props = meta.custom_metadata_map
    assert json.loads(props["class_names"]) == list(CLASSES)
    assert props["checkpoint"] == str(best.resolve())
    assert props["val_acc"] == re.search(r"val_acc(0\.\d{4})", best.name).group(1)
    assert props["test_acc"] == f"{acc:.4f}"


def test_export_writes_a_verified_graph_next_to_the_checkpoint(cli, synthetic_dir: Path) -> None:
    cli("--trainer.max_epochs", "1")
    cli("--ckpt_path", "last", subcommand="export")
    onnx_path = RUN / "checkpoints" / "model.onnx"
    images, labels = load_split(str(synthetic_dir), "test", download=False)
    compare(onnx_path, rebuilt(RUN / "checkpoints" / "last.ckpt"), images, labels)
    assert sorted(p.name for p in RUN.parent.iterdir()) == ["version_0"]  # export made no run directory


def test_a_graph_that_disagrees_is_an_error_and_writes_nothing(cli, capsys, monkeypatch) -> None:
    cli("--trainer.max_epochs", "1")
    cli("--ckpt_path", "last", subcommand="export")
    onnx_path = RUN / "checkpoints" / "model.onnx"
    before = onnx_path.read_bytes()
    real = export.to_onnx_bytes

    def off_by_a_little(model):  # the graph of a slightly different model, as a broken exporter would write
        twin = SoftmaxRegression(**{k: v for k, v in model.hparams.items() if not k.startswith("_")})
        twin.load_state_dict(model.state_dict())
        with torch.no_grad():
            twin.linear.bias[3] += 1e-3
        return real(twin)

    monkeypatch.setattr(export, "to_onnx_bytes", off_by_a_little)
    err = error_of(capsys, cli, "--ckpt_path", "last", "--output", "fresh.onnx", subcommand="export")
    assert "the ONNX graph does not match the PyTorch model on the" in err
    assert "nothing was written" in err
    assert "onnxruntime's probabilities are up to" in err
    assert not Path("fresh.onnx").exists()
    with pytest.raises(SystemExit):
        cli("--ckpt_path", "last", subcommand="export")
    assert onnx_path.read_bytes() == before  # the earlier export is untouched


def test_export_bad_inputs_are_one_message(cli, capsys) -> None:
    err = error_of(capsys, cli, "--ckpt_path", "nope.ckpt", subcommand="export")
    assert "checkpoint nope.ckpt does not exist" in err
    cli("--trainer.max_epochs", "1")
    assert "--atol must be > 0, got 0.0" in error_of(capsys, cli, "--atol", "0", subcommand="export")
    Path("in_the_way").write_text("a file, not a directory")
    err = error_of(capsys, cli, "--ckpt_path", "last", "--output", "in_the_way/model.onnx", subcommand="export")
    assert "cannot write in_the_way/model.onnx (" in err
    assert "): no model.onnx was written" in err
    assert "resumes" not in err  # about this file, not about training
    Path("a_directory").mkdir()
    err = error_of(capsys, cli, "--ckpt_path", "last", "--output", "a_directory", subcommand="export")
    assert "--output a_directory is a directory: give the file to write, e.g. `--output a_directory/model.onnx`" in err


def readme_snippet() -> str:
    readme = (REPO / "docs/deploying.md").read_text()
    block = readme.split("<!-- onnx-snippet -->", 1)[1].split("<!-- /onnx-snippet -->", 1)[0]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_snippet_classifies_a_png_without_torch(cli, synthetic_dir: Path, tmp_path: Path) -> None:
    cli("--trainer.max_epochs", "1")
    cli("--ckpt_path", "last", "--output", "model.onnx", subcommand="export")
    images, _ = load_split(str(synthetic_dir), "test", download=False)
    Image.fromarray(images[0].numpy()).save("garment.png")  # a 28x28 light-on-black test image
    with torch.no_grad():
        probabilities = rebuilt(RUN / "checkpoints" / "last.ckpt")(images[:1].float().div(255)).softmax(-1)[0]
    script = readme_snippet() + "\nimport sys\nassert 'torch' not in sys.modules and 'lightning' not in sys.modules\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    name, probability = out.stdout.strip().rsplit(" ", 1)
    assert name == CLASSES[int(probabilities.argmax())]
    assert float(probability) == pytest.approx(float(probabilities.max()), abs=1e-3)


EXPORTED_RECIPES = {  # every recipe this project trains, shortened with configs/debug.yaml
    "debug": ["--config", str(REPO / "configs/fashion_mnist.yaml")],
    "bf16": ["--config", str(REPO / "configs/fashion_mnist.yaml"), "--config", str(REPO / "configs/bf16.yaml")],
    "seed": ["--config", str(REPO / "configs/seed_recipe.yaml")],
    "ddp": ["--config", str(REPO / "configs/fashion_mnist.yaml"), "--config", str(REPO / "configs/ddp_cpu.yaml")],
}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(EXPORTED_RECIPES))
def test_every_trained_recipe_exports(tmp_path: Path, recipe: str) -> None:
    """The check's tolerance follows float32 rounding, so correct graphs of every recipe pass (a graph off by 1e-3
    in one bias is refused: test_a_graph_that_disagrees_is_an_error_and_writes_nothing)."""
    need_real_data()
    args = [
        *EXPORTED_RECIPES[recipe],
        "--config",
        str(REPO / "configs/debug.yaml"),
        "--data.data_dir",
        real_data(tmp_path),
    ]
    fit = run_cli("fit", *args, cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    exported = run_cli("export", *args, "--ckpt_path", "last", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "same class for every image" in exported.stdout + exported.stderr
    assert (tmp_path / "logs/debug/version_0/checkpoints/model.onnx").is_file()


def test_lightnings_own_exporters_work(tmp_path: Path) -> None:
    """`model.to_onnx` and `model.to_torchscript`, Lightning's own, on SoftmaxRegression: same outputs."""
    model = SoftmaxRegression().eval()
    x = torch.rand(4, 1, 28, 28)
    scripted = model.to_torchscript()
    torch.testing.assert_close(scripted(x), model(x))
    model.to_onnx(tmp_path / "lightning.onnx", x, export_params=True)
    session = ort.InferenceSession(str(tmp_path / "lightning.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-5)
