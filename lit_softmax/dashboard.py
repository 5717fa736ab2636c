"""The TensorBoard dashboard: what the model learned (weight templates), where it errs (confusion matrices,
misclassified images), how well its confidence is calibrated (reliability diagrams, ECE), and the HParams tab.

`TensorBoardDashboard` is a callback with its own metrics, so the model stays a plain classifier: it reads the
logits that `validation_step`/`test_step` return. Pictures are drawn with PIL (already a torchvision
dependency) and written with TensorBoard's public `SummaryWriter.add_image`. Other loggers get the scalars.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix

from lit_softmax.fashion_mnist import CLASSES

FONT = ImageFont.load_default(size=11)
WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (150, 150, 150)


class CalibrationBins(Metric):
    """Per confidence bin: how many predictions, how many correct, and the sum of their confidences.

    Sums only, so it is exact across processes (torchmetrics sums the states) and costs O(bins) memory. Bins as
    torchmetrics' `MulticlassCalibrationError`: `n_bins` equal-width bins of the top-1 softmax probability, plus
    one slot for a confidence of exactly 1.0.
    """

    full_state_update = False

    def __init__(self, n_bins: int = 15) -> None:
        super().__init__()
        self.register_buffer("boundaries", torch.linspace(0, 1, n_bins + 1), persistent=False)
        for name in ("count", "correct", "confidence"):
            self.add_state(name, torch.zeros(n_bins + 1), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        confidence, predicted = logits.float().softmax(dim=1).max(dim=1)
        index = torch.bucketize(confidence, self.boundaries, right=True) - 1
        self.count.scatter_add_(0, index, torch.ones_like(confidence))
        self.correct.scatter_add_(0, index, (predicted == target).float())
        self.confidence.scatter_add_(0, index, confidence)

    def compute(self) -> dict[str, Tensor]:
        return {"count": self.count, "correct": self.correct, "confidence": self.confidence}


def expected_calibration_error(bins: dict[str, Tensor]) -> Tensor:
    """ECE (l1): sum over bins of |accuracy - mean confidence| weighted by the bin's share of samples."""
    count = bins["count"]
    return (bins["correct"] - bins["confidence"]).abs().sum() / count.sum().clamp(min=1)


def _diverging(v: Tensor) -> Tensor:
    """v in [-1, 1] -> (..., 3) RGB in [0, 255]: blue (negative), white (0), red (positive)."""
    pos, neg = v.clamp(min=0), (-v).clamp(min=0)
    rgb = torch.stack([1 - neg, 1 - neg - pos, 1 - pos], dim=-1).clamp(0, 1)
    return (rgb * 255).round().to(torch.uint8)


def _sequential(v: Tensor) -> Tensor:
    """v in [0, 1] -> white to dark blue."""
    rgb = torch.stack([1 - 0.85 * v, 1 - 0.65 * v, 1 - 0.25 * v], dim=-1).clamp(0, 1)
    return (rgb * 255).round().to(torch.uint8)


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


def reliability_diagram(bins: dict[str, Tensor], size: int = 240) -> Image.Image:
    """Accuracy vs confidence per bin (bars) against the diagonal of perfect calibration."""
    count, correct, confidence = (bins[k].float().cpu() for k in ("count", "correct", "confidence"))
    n_bins = len(count) - 1  # the extra last slot holds confidence == 1.0, drawn with the top bin
    count[-2] += count[-1]
    correct[-2] += correct[-1]
    confidence[-2] += confidence[-1]
    count, correct, confidence = count[:-1], correct[:-1], confidence[:-1]
    acc_bin, conf_bin = correct / count.clamp(min=1), confidence / count.clamp(min=1)
    pad = 30
    canvas = Image.new("RGB", (size + 2 * pad, size + 2 * pad), WHITE)
    draw = ImageDraw.Draw(canvas)
    width = size / n_bins
    for b in range(n_bins):
        if count[b] == 0:
            continue
        x0 = pad + b * width
        draw.rectangle([x0, pad + size * (1 - acc_bin[b].item()), x0 + width - 1, pad + size], fill=(70, 110, 200))
        gap_top = pad + size * (1 - conf_bin[b].item())
        draw.line([x0, gap_top, x0 + width - 1, gap_top], fill=(220, 60, 60), width=2)
    draw.line([pad, pad + size, pad + size, pad], fill=GREY)  # perfect calibration
    draw.rectangle([pad, pad, pad + size, pad + size], outline=BLACK)
    ece = expected_calibration_error(bins).item()
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
    """Logs the pictures above and per-class accuracy at every N-th validation end and after testing, `val/ece`
    and `test/ece` to every logger, and `hp_metric` (the best `val/acc`) to TensorBoard's HParams tab.

    Metrics are updated on every process and synced; only rank 0 draws and writes pictures.
    """

    def __init__(self, every_n_val_epochs: int = 10, misclassified: int = 32, n_bins: int = 15) -> None:
        """
        Args:
            every_n_val_epochs: draw the validation pictures and per-class accuracy at epochs 0, N, 2N, ... and at
                the last epoch (0: never). Drawing costs ~10 ms a picture; every epoch would add ~5% to a default
                `fit`.
            misclassified: how many misclassified test images to show (0 turns the grid off).
            n_bins: confidence bins of the reliability diagram and ECE.
        """
        self.every_n_val_epochs = every_n_val_epochs
        self.misclassified = misclassified
        self.n_bins = n_bins
        self._metrics: dict[str, tuple[MulticlassConfusionMatrix, CalibrationBins]] = {}
        self._mistakes: list[tuple[Tensor, Tensor, Tensor]] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        num_classes = pl_module.hparams.get("num_classes", len(CLASSES))
        device = trainer.strategy.root_device  # where the model and the batches will be
        self._metrics = {
            split: (MulticlassConfusionMatrix(num_classes).to(device), CalibrationBins(self.n_bins).to(device))
            for split in ("val", "test")
        }

    # ---- collecting ------------------------------------------------------------------------------
    def _update(self, split: str, outputs, batch) -> None:
        logits, target = outputs["logits"], batch[1]
        for metric in self._metrics[split]:
            metric.update(logits, target)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for metric in self._metrics["val"]:
            metric.reset()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        self._update("val", outputs, batch)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for metric in self._metrics["test"]:
            metric.reset()
        self._mistakes = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update("test", outputs, batch)
        have = sum(len(m[0]) for m in self._mistakes)
        if have < self.misclassified:
            x, y = batch
            pred = outputs["logits"].argmax(dim=1)
            wrong = (pred != y).nonzero().flatten()[: self.misclassified - have]
            self._mistakes.append((x[wrong].float().cpu(), y[wrong].cpu(), pred[wrong].cpu()))

    # ---- logging ---------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        n = self.every_n_val_epochs
        draw = n > 0 and (trainer.current_epoch % n == 0 or trainer.current_epoch == trainer.max_epochs - 1)
        writer = self._log_split(trainer, pl_module, "val", draw)
        if writer is not None and draw:
            # The weights on standardised pixels: red pixels are evidence for the class, blue against it.
            add_picture(writer, "val/weight_templates", weight_templates(pl_module.linear.weight), trainer.global_step)
        if draw:  # the HParams entry is rewritten as often as the pictures, the last validation included
            self._log_hp_metric(trainer, pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = self._log_split(trainer, pl_module, "test", draw=True)
        if writer is not None and self._mistakes:
            images, true, pred = (torch.cat(parts) for parts in zip(*self._mistakes))
            add_picture(writer, "test/misclassified", misclassified_grid(images, true, pred), trainer.global_step)

    def _log_split(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str, draw: bool):
        confmat, calibration = self._metrics[split]
        counts, bins = confmat.compute(), calibration.compute()  # collectives under DDP: every rank calls them
        # Identical on every rank already (synced states); "max" keeps it bit-exact where a mean could round.
        pl_module.log(f"{split}/ece", expected_calibration_error(bins), sync_dist=True, reduce_fx="max")
        writer = tensorboard_writer(trainer)
        if writer is None or not draw:
            return writer
        step = trainer.global_step
        add_picture(writer, f"{split}/confusion_matrix", confusion_matrix(counts), step)
        add_picture(writer, f"{split}/reliability_diagram", reliability_diagram(bins), step)
        per_class = counts.diag() / counts.sum(dim=1).clamp(min=1)
        for name, acc in zip(CLASSES, per_class.tolist()):
            writer.add_scalar(f"{split}/acc_per_class/{name.replace('/', '_')}", acc, step)
        return writer

    @staticmethod
    def _log_hp_metric(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """TensorBoard's HParams tab: the run's hyper-parameters against its best val/acc so far."""
        best = trainer.callback_metrics.get("val/acc_best")
        if best is None or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                # logger.hparams: everything logged so far (model, data, and the DataModule's per-process batch).
                logger.log_hyperparams(logger.hparams, {"hp_metric": float(best)}, step=trainer.global_step)


def tensorboard_writer(trainer: L.Trainer):
    """TensorBoard's SummaryWriter on rank 0, else None (other loggers and ranks get no pictures)."""
    if not trainer.is_global_zero:
        return None
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def add_picture(writer, tag: str, image: Image.Image, step: int) -> None:
    writer.add_image(tag, np.asarray(image), step, dataformats="HWC")
