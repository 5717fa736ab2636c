"""Predictions: CSV for the test split, and for folders of user images in any size, mode and format."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, real_data, run_cli, scalars
from PIL import Image

from lit_softmax import CLASSES, FashionMNISTDataModule, SoftmaxRegression, pixels
from lit_softmax.errors import DataError
from lit_softmax.images import class_of_folder, load_image_folder, to_fashion_mnist

CONFIG = str(REPO / "configs/fashion_mnist.yaml")


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def garment() -> np.ndarray:
    """A light 'garment' on black, trimmed and centred like a Fashion-MNIST image."""
    image = np.zeros((28, 28), dtype=np.uint8)
    image[:, 8:20] = 200  # like the dataset: the longest side spans all 28 pixels
    image[:6, 4:24] = 230
    return image


def test_light_on_dark_survives_resizing_and_modes() -> None:
    original = garment()
    for size, mode in [((84, 84), "L"), ((140, 140), "RGB"), ((56, 56), "RGBA")]:
        image = Image.fromarray(original).resize(size, Image.BICUBIC).convert(mode)
        restored = to_fashion_mnist(image).astype(float)
        assert np.abs(restored - original).mean() < 12, (size, mode)


def test_dark_on_light_photo_is_inverted_and_trimmed() -> None:
    original = garment()
    photo = np.full((300, 200), 245, dtype=np.uint8)  # white background, garment off-centre and dark
    photo[40:40 + 168, 30:30 + 168] = 255 - np.asarray(Image.fromarray(original).resize((168, 168)))  # fmt: skip
    restored = to_fashion_mnist(Image.fromarray(photo)).astype(float)
    assert restored[:, :3].max() < 30  # background black again (the garment is narrower than tall)
    assert np.abs(restored - original).mean() < 15
    forced = to_fashion_mnist(Image.fromarray(photo), invert="no")
    assert forced.max() < restored.max() / 4  # invert="no": the dark garment is lost in the light background


def test_transparent_png_background_is_background() -> None:
    rgba = np.zeros((60, 60, 4), dtype=np.uint8)
    rgba[10:50, 20:40] = (40, 40, 40, 255)  # dark garment, transparent elsewhere
    restored = to_fashion_mnist(Image.fromarray(rgba, "RGBA"))
    assert restored[:, :5].max() < 30
    assert restored[14, 14] > 150


def test_folder_reports_bad_files_and_keeps_the_rest(tmp_path: Path, monkeypatch) -> None:
    Image.fromarray(garment()).save(tmp_path / "a.png")
    Image.fromarray(garment()).convert("RGB").save(tmp_path / "b.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    good = (tmp_path / "b.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) // 2])
    Image.new("L", (300, 300)).save(tmp_path / "huge.bmp")
    monkeypatch.setattr(pixels, "MAX_IMAGE_PIXELS", 200 * 200)
    pictures, names, labels, failures = load_image_folder(tmp_path)
    assert names == ["a.png", "b.jpg"]
    assert labels.tolist() == [-1, -1]  # not in a class folder
    assert pictures.shape == (2, 28, 28)
    assert pictures.dtype == torch.uint8
    reasons = dict(failures)
    assert set(reasons) == {"notes.txt", "fake.png", "truncated.jpg", "huge.bmp"}
    assert "not an image file type" in reasons["notes.txt"]
    assert "decompression bomb guard" in reasons["huge.bmp"]


def test_subfolders_are_searched_and_class_folders_give_labels(tmp_path: Path) -> None:
    for folder in ("Sandal", "ankle_boot", "T-shirt_top", "shirt/old", "holiday"):
        (tmp_path / folder).mkdir(parents=True)
        Image.fromarray(garment()).save(tmp_path / folder / "x.png")
    Image.fromarray(garment()).save(tmp_path / "loose.png")
    (tmp_path / ".cache").mkdir()
    Image.fromarray(garment()).save(tmp_path / ".cache" / "hidden.png")
    _, names, labels, failures = load_image_folder(tmp_path)
    found = dict(zip(names, labels.tolist()))
    assert found == {
        "Sandal/x.png": CLASSES.index("Sandal"), "ankle_boot/x.png": CLASSES.index("Ankle boot"),
        "T-shirt_top/x.png": CLASSES.index("T-shirt/top"), "shirt/old/x.png": CLASSES.index("Shirt"),
        "holiday/x.png": -1, "loose.png": -1,
    }  # fmt: skip
    assert failures == []


def test_empty_or_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"predict_dir .* is empty"):
        load_image_folder(tmp_path)
    with pytest.raises(DataError, match=r"is not a directory"):
        load_image_folder(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(DataError, match=r"none of the 1 files .* is a readable image"):
        load_image_folder(tmp_path)


def render_test_images(folder: Path, pictures: torch.Tensor, labels: torch.Tensor) -> dict[str, int]:
    """Real test images saved the ways users have them: sizes, modes, formats, some dark-on-light."""
    folder.mkdir()
    truth = {}
    variants = [(28, "L", "png", False), (56, "RGB", "jpg", False), (100, "RGBA", "png", False),
                (37, "L", "bmp", False), (84, "RGB", "png", True), (64, "L", "jpg", True)]  # fmt: skip
    for i, (image, label) in enumerate(zip(pictures.numpy(), labels.tolist())):
        size, mode, fmt, invert = variants[i % len(variants)]
        picture = Image.fromarray(255 - image if invert else image).resize((size, size), Image.BICUBIC)
        name = f"img{i:03d}_{size}{mode}{'_inv' if invert else ''}.{fmt}"
        picture.convert(mode).save(folder / name, quality=95) if fmt == "jpg" else picture.convert(mode).save(
            folder / name
        )
        truth[name] = label
    return truth


@pytest.mark.slow
def test_predict_test_split_and_image_folder(default_run: Path, tmp_path: Path) -> None:
    best = next(p for p in (default_run / "checkpoints").iterdir() if p.name != "last.ckpt")
    data = ["--data.data_dir", real_data(tmp_path)]

    # 1. Default input: the test split, with the true label.
    out = run_cli("predict", "--config", CONFIG, "--ckpt_path", str(best), *data, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = read_csv(tmp_path / "logs" / "fashion_mnist" / "version_0" / "predictions.csv")
    assert len(rows) == 10000
    assert list(rows[0])[:4] == ["index", "true_label", "predicted", "probability"]
    probs = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    assert all(float(r["probability"]) == pytest.approx(p.max(), abs=1e-6) for r, p in zip(rows[:50], probs))
    accuracy = np.mean([r["predicted"] == r["true_label"] for r in rows])
    test_acc = scalars(default_run)["test/acc"][-1]
    assert accuracy == pytest.approx(test_acc, abs=1e-4)  # the CSV agrees with `test`

    # 2. A folder of user images, plus files that cannot be read.
    dm = FashionMNISTDataModule(data_dir=real_data(tmp_path))
    dm.setup("test")
    originals, labels = dm.test_set.images[:300], dm.test_set.labels[:300]
    truth = render_test_images(tmp_path / "photos", originals, labels)
    (tmp_path / "photos" / "readme.txt").write_text("hello")
    (tmp_path / "photos" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    out = run_cli(
        "predict", "--config", CONFIG, "--ckpt_path", str(best), *data,
        "--data.predict_dir", str(tmp_path / "photos"), cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "broken.png" in out.stderr  # reported in the log too
    rows = {r["file"]: r for r in read_csv(tmp_path / "logs" / "fashion_mnist" / "version_1" / "predictions.csv")}
    assert set(rows) == set(truth) | {"readme.txt", "broken.png"}
    assert rows["broken.png"]["predicted"] == ""
    assert rows["broken.png"]["error"]
    on_files = np.mean([rows[name]["predicted"] == CLASSES[label] for name, label in truth.items()])
    model = SoftmaxRegression.load_from_checkpoint(best, map_location="cpu").eval()
    with torch.no_grad():
        on_originals = (model(originals.float() / 255).argmax(1) == labels).float().mean().item()
    print(f"accuracy on 300 originals {on_originals:.3f}, on rendered files {on_files:.3f}")
    assert on_files >= on_originals - 0.05


@pytest.mark.slow
def test_class_folders_get_true_labels_and_accuracy_also_under_ddp(default_run: Path, tmp_path: Path) -> None:
    """Photos sorted into class-named folders: predictions.csv gets true_label, the run reports accuracy overall and
    per class; with 2 DDP processes there is still one CSV, each file (and each failure) once."""
    best = next(p for p in (default_run / "checkpoints").iterdir() if p.name != "last.ckpt")
    data = ["--data.data_dir", real_data(tmp_path)]
    dm = FashionMNISTDataModule(data_dir=real_data(tmp_path))
    dm.setup("test")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, (image, label) in enumerate(zip(dm.test_set.images[:200].numpy(), dm.test_set.labels[:200].tolist())):
        folder = photos / CLASSES[label].replace("/", "_")
        folder.mkdir(exist_ok=True)
        Image.fromarray(image).resize((56, 56)).save(folder / f"{i:03d}.png")
    (photos / "Bag" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    for extra in ([], ["--config", str(REPO / "configs/ddp_cpu.yaml")]):
        out = run_cli("predict", "--config", CONFIG, *extra, "--ckpt_path", str(best), *data,
                      "--data.predict_dir", str(photos), cwd=tmp_path)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        log = out.stdout + out.stderr
        written = re.findall(r"wrote \d+ predictions to (\S+)", log)
        assert len(written) == 1, written  # one file, named once
        rows = read_csv(Path(tmp_path / written[0]))
        assert len(rows) == 201
        assert sum(r["file"].endswith("broken.png") for r in rows) == 1
        labelled = [r for r in rows if r["predicted"]]
        assert all(r["true_label"] == CLASSES[class_of_folder(r["file"].split("/")[0])] for r in labelled)
        accuracy = np.mean([r["predicted"] == r["true_label"] for r in labelled])
        reported = float(re.search(r"accuracy on the 200 labelled images: (0\.\d+)", log).group(1))
        assert reported == pytest.approx(accuracy, abs=1e-4)
        assert accuracy > 0.7
        for name in CLASSES:
            per_class = [r["predicted"] == name for r in labelled if r["true_label"] == name]
            assert f"  {name:12s} {np.mean(per_class):.4f}  ({len(per_class)} images)" in log
