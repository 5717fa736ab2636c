"""TensorBoard images of what the model learned: weight templates, confusion matrices, calibration, mistakes.

Drawn with PIL (already a torchvision dependency) rather than matplotlib: a few milliseconds per image, so
they can be logged at every validation end without slowing training.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch import loggers
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image, ImageDraw, ImageFont
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor
from torch.utils.tensorboard.summary import hparams
from torchmetrics.functional.classification.calibration_error import _binning_bucketize
from torchmetrics.utilities.data import dim_zero_cat

from lit_softmax.data import CLASSES

FONT = ImageFont.load_default(size=11)
WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (150, 150, 150)


def _diverging(v: Tensor) -> Tensor:
    """v in [-1, 1] -> (..., 3) RGB in [0, 255]: blue (negative), white (0), red (positive)."""
    pos, neg = v.clamp(min=0), (-v).clamp(min=0)
    rgb = torch.stack([1 - neg, 1 - neg - pos, 1 - pos], dim=-1).clamp(0, 1)
    return (rgb * 255).round().to(torch.uint8)


def _sequential(v: Tensor) -> Tensor:
    """v in [0, 1] -> white to dark blue."""
    rgb = torch.stack([1 - 0.85 * v, 1 - 0.65 * v, 1 - 0.25 * v], dim=-1).clamp(0, 1)
    return (rgb * 255).round().to(torch.uint8)


def add_png(writer, tag: str, image: Image.Image, step: int) -> None:
    """Write a PIL image to TensorBoard as a PNG summary.

    SummaryWriter.add_image would round-trip the picture through float tensors and a slow default PNG encoder
    (~16 ms for a 420x430 image); encoding once with PIL at a low compression level takes ~2 ms.
    """
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    png = Summary.Image(height=image.height, width=image.width, colorspace=3, encoded_image_string=buffer.getvalue())
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=png)]), step)


def weight_templates(weight: Tensor, names=CLASSES, scale: int = 4) -> Image.Image:
    """(10, 784) weights -> (3, H, W) image: one 28x28 heat map per class, red = evidence for the class."""
    w = weight.detach().float().cpu().reshape(-1, 28, 28)
    w = w / w.abs().amax(dim=(1, 2), keepdim=True).clamp(min=1e-12)  # each class on its own symmetric scale
    cell, label_h, cols = 28 * scale, 14, 5
    rows = -(-len(w) // cols)
    canvas = Image.new("RGB", (cols * (cell + 6), rows * (cell + label_h + 6)), WHITE)
    draw = ImageDraw.Draw(canvas)
    for i, template in enumerate(w):
        x, y = (i % cols) * (cell + 6), (i // cols) * (cell + label_h + 6)
        tile = Image.fromarray(_diverging(template).numpy()).resize((cell, cell), Image.NEAREST)
        canvas.paste(tile, (x, y + label_h))
        draw.text((x, y), names[i], fill=BLACK, font=FONT)
    return canvas


def confusion_matrix(counts: Tensor, names=CLASSES, cell: int = 34) -> Image.Image:
    """(10, 10) counts (rows = true class) -> row-normalised heat map with values and class names."""
    counts = counts.detach().float().cpu()
    norm = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    k, margin = len(norm), 80
    canvas = Image.new("RGB", (margin + k * cell, margin + k * cell + 14), WHITE)
    draw = ImageDraw.Draw(canvas)
    colours = _sequential(norm)
    for t in range(k):
        draw.text((2, margin + t * cell + cell // 2 - 6), names[t][:12], fill=BLACK, font=FONT)
        for p in range(k):
            x, y = margin + p * cell, margin + t * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=tuple(colours[t, p].tolist()))
            value = norm[t, p].item()
            if value >= 0.005:
                draw.text((x + 4, y + cell // 2 - 6), f"{value:.2f}", fill=WHITE if value > 0.5 else BLACK, font=FONT)
    for p in range(k):  # predicted-class names, one per column, stacked to fit
        draw.text((margin + p * cell + 2, 4 + (p % 3) * 22), names[p][:8], fill=BLACK, font=FONT)
    draw.text((margin, margin + k * cell + 1), "rows: true class, columns: predicted", fill=GREY, font=FONT)
    return canvas


def reliability_diagram(confidences: Tensor, accuracies: Tensor, n_bins: int = 15, size: int = 240) -> Image.Image:
    """Accuracy vs confidence per bin (bars) against the diagonal of perfect calibration."""
    boundaries = torch.linspace(0, 1, n_bins + 1)
    acc_bin, conf_bin, prop_bin = _binning_bucketize(confidences.float().cpu(), accuracies.float().cpu(), boundaries)
    ece = (acc_bin - conf_bin).abs().mul(prop_bin).sum().item()
    pad = 30
    canvas = Image.new("RGB", (size + 2 * pad, size + 2 * pad), WHITE)
    draw = ImageDraw.Draw(canvas)
    width = size / n_bins
    for b in range(n_bins):
        if prop_bin[b] == 0:
            continue
        x0 = pad + b * width
        draw.rectangle([x0, pad + size * (1 - acc_bin[b].item()), x0 + width - 1, pad + size], fill=(70, 110, 200))
        gap_top = pad + size * (1 - conf_bin[b].item())
        draw.line([x0, gap_top, x0 + width - 1, gap_top], fill=(220, 60, 60), width=2)
    draw.line([pad, pad + size, pad + size, pad], fill=GREY)  # perfect calibration
    draw.rectangle([pad, pad, pad + size, pad + size], outline=BLACK)
    draw.text((pad, 6), f"ECE {ece:.4f}  (bars: accuracy, red: mean confidence)", fill=BLACK, font=FONT)
    draw.text((pad, pad + size + 6), "confidence 0 .. 1", fill=GREY, font=FONT)
    return canvas


def misclassified_grid(images: Tensor, true: Tensor, pred: Tensor, names=CLASSES, scale: int = 3) -> Image.Image:
    """(N, 28, 28) images in [0, 1] with 'true -> predicted' captions, 8 per row."""
    cell, label_h, cols = 28 * scale, 26, 8
    rows = max(1, -(-len(images) // cols))
    canvas = Image.new("RGB", (cols * (cell + 4), rows * (cell + label_h + 4)), WHITE)
    draw = ImageDraw.Draw(canvas)
    pixels = (images.detach().float().cpu().reshape(-1, 28, 28).clamp(0, 1) * 255).round().to(torch.uint8)
    for i in range(len(pixels)):
        x, y = (i % cols) * (cell + 4), (i // cols) * (cell + label_h + 4)
        canvas.paste(Image.fromarray(pixels[i].numpy()).convert("RGB").resize((cell, cell)), (x, y + label_h))
        draw.text((x, y), names[int(true[i])][:11], fill=(0, 120, 0), font=FONT)
        draw.text((x, y + 12), names[int(pred[i])][:11], fill=(200, 0, 0), font=FONT)
    return canvas


class TensorBoardDashboard(L.Callback):
    """Logs the images above to TensorBoard: at every validation end and after testing.

    Metrics are computed on every process (they are synced across processes); only rank 0 draws and writes.
    """

    def __init__(self, every_n_val_epochs: int = 1, misclassified: int = 32) -> None:
        """
        Args:
            every_n_val_epochs: draw the validation images every N validation epochs (0: never).
            misclassified: how many misclassified test images to show (0 turns the grid off).
        """
        self.every_n_val_epochs = every_n_val_epochs
        self.misclassified = misclassified
        self._mistakes: list[tuple[Tensor, Tensor, Tensor]] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        n = self.every_n_val_epochs
        if trainer.sanity_checking or n <= 0 or trainer.current_epoch % n != 0:
            return
        self._log_stage(trainer, pl_module, "val", pl_module.val_confmat, pl_module.val_ece)
        writer = self._writer(trainer)
        if writer is not None:
            # The weights on standardised pixels: red pixels are evidence for the class, blue against it.
            add_png(writer, "val/weight_templates", weight_templates(pl_module.linear.weight), _log_step(trainer))

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mistakes = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        have = sum(len(m[0]) for m in self._mistakes)
        if have >= self.misclassified:
            return
        x, y = batch
        with torch.no_grad():
            pred = pl_module(x).argmax(dim=1)
        wrong = (pred != y).nonzero().flatten()[: self.misclassified - have]
        images = x[wrong].float()
        images = images / 255 if x.dtype == torch.uint8 else images
        self._mistakes.append((images.cpu(), y[wrong].cpu(), pred[wrong].cpu()))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_stage(trainer, pl_module, "test", pl_module.test_confmat, pl_module.test_ece)
        writer = self._writer(trainer)
        if writer is not None and self._mistakes:
            images, true, pred = (torch.cat(parts) for parts in zip(*self._mistakes))
            add_png(writer, "test/misclassified", misclassified_grid(images, true, pred), _log_step(trainer))

    def _log_stage(self, trainer, pl_module, stage: str, confmat, ece_metric) -> None:
        counts = confmat.compute()  # collective under DDP: every rank calls it
        with ece_metric.sync_context(should_sync=trainer.world_size > 1):
            confidences = dim_zero_cat(ece_metric.confidences)
            accuracies = dim_zero_cat(ece_metric.accuracies)
        writer = self._writer(trainer)
        if writer is None:
            return
        step = _log_step(trainer)
        add_png(writer, f"{stage}/confusion_matrix", confusion_matrix(counts), step)
        add_png(writer, f"{stage}/reliability_diagram", reliability_diagram(confidences, accuracies), step)
        per_class = counts.diag() / counts.sum(dim=1).clamp(min=1)
        for name, acc in zip(CLASSES, per_class.tolist()):
            writer.add_scalar(f"{stage}/acc_per_class/{name.replace('/', '_')}", acc, step)

    @staticmethod
    def _writer(trainer: L.Trainer):
        """TensorBoard's SummaryWriter on rank 0, else None (other loggers and ranks get no images)."""
        if not trainer.is_global_zero:
            return None
        for logger in trainer.loggers:
            if isinstance(logger, loggers.TensorBoardLogger):
                return logger.experiment
        return None


class TensorBoardLogger(loggers.TensorBoardLogger):
    """Lightning's TensorBoardLogger without the placeholder `hp_metric = -1`.

    Lightning declares `hp_metric` for TensorBoard's HPARAMS tab by logging -1 as its value, at the start of
    fit and again at the start of test, so the tab can end up showing -1. Here the metric is declared without a
    value; the model logs the real one (best `val/acc`) at every validation end.
    """

    def _get_next_version(self) -> int:
        # Claim the directory with mkdir, which is atomic: two runs started at the same moment can no longer
        # both pick version_N and write into each other's directory. Other ranks only need the number.
        version = super()._get_next_version()
        if rank_zero_only.rank != 0:
            return version
        root = Path(self.root_dir)
        root.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                (root / f"version_{version}").mkdir()
                return version
            except FileExistsError:
                version += 1

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        # A run that failed before saving any checkpoint (bad data, bad checkpoint path, a crash in the first
        # epoch) leaves nothing worth keeping; a directory with a config.yaml would only look like a real run.
        # Runs with checkpoints (interrupted, diverged after good epochs) are kept.
        run = Path(self.log_dir)
        if status == "failed" and run.is_dir() and not any(run.glob("checkpoints/*.ckpt")):
            shutil.rmtree(run, ignore_errors=True)

    @rank_zero_only
    def log_hyperparams(self, params, metrics=None, step=None) -> None:
        if metrics is not None or not self._default_hp_metric:
            super().log_hyperparams(params, metrics, step)
            return
        self._default_hp_metric = False
        try:
            super().log_hyperparams(params, None, step)  # records the params (hparams.yaml), writes no summary
        finally:
            self._default_hp_metric = True
        flat = self._sanitize_params(_flatten_dict(_convert_params(params)))
        writer = self.experiment._get_file_writer()
        for summary in hparams(flat, {"hp_metric": 0.0}):  # only the metric's name is written, not the value
            writer.add_summary(summary, step)


def _log_step(trainer: L.Trainer) -> int:
    """The x-axis value Lightning gives `self.log` scalars, so images line up with them: it counts training
    batches (groups, with `data.steps_per_execution` > 1), and equals `global_step` with one SGD step each."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped
