"""The TensorBoard dashboard: what the model learned (weight templates), where it errs (confusion matrices,
misclassified images), how well its confidence is calibrated (reliability diagrams, ECE), and the HParams tab.

`TensorBoardDashboard` is a callback with its own metrics, so the model stays a plain classifier: it reads the
logits that `validation_step`/`test_step` return. Figures are drawn with matplotlib (its object-oriented API,
no pyplot) and go to TensorBoard (`add_figure`) and MLflow (`log_figure`, as artifacts); every logger gets the
scalars (ECE, per-class accuracy).
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger
from matplotlib.figure import Figure
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix

from lit_softmax.errors import ConfigError
from lit_softmax.fashion_mnist import CLASSES


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


def _figure(width: float, height: float, margins: tuple[float, float, float, float]) -> Figure:
    """A figure with fixed margins (left, bottom, right, top as fractions): matplotlib's automatic layout
    engines cost more than the drawing itself here. The object-oriented API (no pyplot): no global state."""
    fig = Figure(figsize=(width, height), dpi=80)
    left, bottom, right, top = margins
    fig.subplots_adjust(left=left, bottom=bottom, right=right, top=top)
    return fig


def _mosaic(tiles: np.ndarray, cols: int, gap: int, fill: float) -> np.ndarray:
    """(N, 28, 28) -> one image of `cols` tiles a row with `gap` pixels between them: one imshow instead of N axes."""
    rows = -(-len(tiles) // cols)
    out = np.full((rows * (28 + gap) - gap, cols * (28 + gap) - gap), fill, dtype=np.float32)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * (28 + gap) : r * (28 + gap) + 28, c * (28 + gap) : c * (28 + gap) + 28] = tile
    return out


def weight_templates(weight: Tensor, names=CLASSES) -> Figure:
    """(10, 784) weights -> one 28x28 heat map per class: red pixels are evidence for the class, blue against."""
    w = weight.detach().float().cpu().reshape(-1, 28, 28)
    w = (w / w.abs().amax(dim=(1, 2), keepdim=True).clamp(min=1e-12)).numpy()  # each class on its own scale
    fig = _figure(9, 4.4, (0.01, 0.02, 0.88, 0.93))
    ax = fig.add_subplot()
    image = ax.imshow(_mosaic(w, cols=5, gap=6, fill=np.nan), cmap="RdBu_r", vmin=-1, vmax=1)
    for i, name in enumerate(names):
        r, c = divmod(i, 5)
        ax.text(c * 34 + 14, r * 34 - 1.5, name, ha="center", va="bottom", fontsize=11)
    ax.set_axis_off()
    colorbar = fig.colorbar(image, cax=fig.add_axes((0.9, 0.1, 0.02, 0.75)))
    colorbar.set_label("weight / max |weight| of the class")
    return fig


def confusion_matrix(counts: Tensor, names=CLASSES) -> Figure:
    """(10, 10) counts (rows = true class) -> row-normalised heat map with class names and the notable values."""
    counts = counts.detach().float().cpu()
    norm = (counts / counts.sum(dim=1, keepdim=True).clamp(min=1)).numpy()
    fig = _figure(7.2, 6.2, (0.17, 0.19, 0.84, 0.97))
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for t, p in zip(*np.nonzero(norm >= 0.02)):  # the diagonal and the confusions worth reading
        ax.text(p, t, f"{norm[t, p]:.2f}", ha="center", va="center", fontsize=8,
                color="white" if norm[t, p] > 0.5 else "black")  # fmt: skip
    ticks = range(len(names))
    ax.set_xticks(ticks, names, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    colorbar = fig.colorbar(image, cax=fig.add_axes((0.86, 0.19, 0.025, 0.78)))
    colorbar.set_label("share of the true class")
    return fig


def reliability_diagram(bins: dict[str, Tensor]) -> Figure:
    """Accuracy against mean confidence per bin, beside the diagonal of perfect calibration."""
    count, correct, confidence = (bins[k].double().cpu().clone() for k in ("count", "correct", "confidence"))
    for t in (count, correct, confidence):  # the extra last slot holds confidence == 1.0: draw it with the top bin
        t[-2] += t[-1]
    count, correct, confidence = count[:-1], correct[:-1], confidence[:-1]
    n_bins = len(count)
    centres = (np.arange(n_bins) + 0.5) / n_bins
    seen = (count > 0).numpy()
    accuracy = (correct / count.clamp(min=1)).numpy()
    mean_confidence = (confidence / count.clamp(min=1)).numpy()
    fig = _figure(5.5, 4.8, (0.12, 0.11, 0.97, 0.93))
    ax = fig.add_subplot()
    ax.bar(centres[seen], accuracy[seen], width=1 / n_bins, edgecolor="white", color="tab:blue", label="accuracy")
    ax.plot(mean_confidence[seen], accuracy[seen], "o", color="tab:red", markersize=4,
            label="accuracy at the bin's mean confidence")  # fmt: skip
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top softmax probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"ECE {expected_calibration_error(bins).item():.4f}  ({int(count.sum())} images)")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def misclassified_grid(images: Tensor, true: Tensor, pred: Tensor, names=CLASSES, cols: int = 8) -> Figure:
    """(N, 28, 28) images in [0, 1], each captioned with its true class (green) over the prediction (red)."""
    pixels = images.detach().float().cpu().reshape(-1, 28, 28).clamp(0, 1).numpy()
    rows = max(1, -(-len(pixels) // cols))
    fig = _figure(cols * 1.3, rows * 1.6, (0.0, 0.0, 1.0, 1.0))
    ax = fig.add_subplot()
    ax.imshow(_mosaic(pixels, cols=cols, gap=12, fill=1.0) if len(pixels) else np.ones((28, 28)), cmap="gray",
              vmin=0, vmax=1)  # fmt: skip
    ax.set_ylim(rows * 40 - 12, -12)  # room above the first row for its captions
    for i in range(len(pixels)):
        r, c = divmod(i, cols)
        x, y = c * 40 + 14, r * 40
        ax.text(x, y - 6.5, names[int(true[i])], color="green", fontsize=8, ha="center", va="bottom")
        ax.text(x, y - 0.5, names[int(pred[i])], color="red", fontsize=8, ha="center", va="bottom")
    ax.set_axis_off()
    return fig


class TensorBoardDashboard(L.Callback):
    """Logs the figures above and per-class accuracy for the last validation of `fit` (and every N-th, if asked)
    and after testing, `val/ece` and `test/ece` to every logger, and `hp_metric` (the best `val/acc`) to
    TensorBoard's HParams tab.

    Metrics are updated on every process and synced; only rank 0 draws and writes figures.
    """

    def __init__(
        self, figures: bool = True, every_n_val_epochs: int = 0, misclassified: int = 32, n_bins: int = 15
    ) -> None:
        """
        Args:
            figures: draw figures at all (the scalars are logged either way).
            every_n_val_epochs: also draw the validation figures at epochs 0, N, 2N, ... (0: only at the end of
                `fit`, for its last validation). A figure costs ~0.1 s on a 2-core CPU: three every epoch would
                triple a default `fit`'s 40 x 0.13 s of epochs.
            misclassified: how many misclassified test images to show (0 turns the grid off).
            n_bins: confidence bins of the reliability diagram and ECE.
        """
        for name, value in (("every_n_val_epochs", every_n_val_epochs), ("misclassified", misclassified)):
            if value < 0:
                raise ConfigError(f"dashboard.{name} must be >= 0, got {value} (0 turns it off).")
        if n_bins < 1:
            raise ConfigError(f"dashboard.n_bins must be >= 1, got {n_bins}; e.g. 15.")
        self.figures = figures
        self.every_n_val_epochs = every_n_val_epochs
        self.misclassified = misclassified
        self.n_bins = n_bins
        self._metrics: dict[str, tuple[MulticlassConfusionMatrix, CalibrationBins]] = {}
        self._mistakes: list[tuple[Tensor, Tensor, Tensor]] = []
        self._drawn_step: int | None = None  # the step whose validation figures were drawn last

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
        self._log_split(trainer, pl_module, "val", draw=n > 0 and trainer.current_epoch % n == 0)
        if trainer.state.fn != "fit":  # `validate`: this is the only validation, draw it now
            self._log_split(trainer, pl_module, "val", draw=True, log_ece=False)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The last validation's metrics are still in place: draw them, whenever the run ended (max_epochs,
        # max_steps, early stopping), unless that step was drawn already.
        if self._drawn_step != trainer.global_step and self._metrics["val"][0].update_count:
            self._log_split(trainer, pl_module, "val", draw=True, log_ece=False)
        self._log_hp_metric(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # An interrupted, diverged or pruned (sweep) run still gets its best so far in the HParams tab.
        if trainer.state.fn == "fit":
            self._log_hp_metric(trainer, pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_split(trainer, pl_module, "test", draw=True)
        if self._mistakes and self.figures:
            images, true, pred = (torch.cat(parts) for parts in zip(*self._mistakes))
            publish(trainer, "test/misclassified", lambda: misclassified_grid(images, true, pred))

    def _log_split(self, trainer, pl_module, split: str, draw: bool, log_ece: bool = True) -> None:
        confmat, calibration = self._metrics[split]
        counts, bins = confmat.compute(), calibration.compute()  # collectives under DDP: every rank calls them
        if log_ece:  # identical on every rank (synced states); "max" keeps it bit-exact where a mean could round
            pl_module.log(f"{split}/ece", expected_calibration_error(bins), sync_dist=True, reduce_fx="max")
        if draw and split == "val":
            self._drawn_step = trainer.global_step  # on every rank: on_fit_end's collective depends on it
        if not draw or not self.figures or not trainer.is_global_zero:
            return
        if split == "val":
            # The weights on standardised pixels: red pixels are evidence for the class, blue against it.
            publish(trainer, "val/weight_templates", lambda: weight_templates(pl_module.linear.weight))
        publish(trainer, f"{split}/confusion_matrix", lambda: confusion_matrix(counts))
        publish(trainer, f"{split}/reliability_diagram", lambda: reliability_diagram(bins))
        per_class = counts.diag() / counts.sum(dim=1).clamp(min=1)
        metrics = {
            f"{split}/acc_per_class/{name.replace('/', '_')}": acc for name, acc in zip(CLASSES, per_class.tolist())
        }
        for logger in trainer.loggers:  # straight to the loggers: rank 0 only, outside Lightning's epoch reduction
            logger.log_metrics(metrics, step=trainer.global_step)

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


def publish(trainer: L.Trainer, tag: str, draw) -> None:
    """Draw a figure (only if some logger takes pictures) and hand it to every logger that does: TensorBoard's
    Images tab, MLflow artifacts (`dashboard/<tag>/step<N>.png`). Other loggers (CSV) get the scalars only."""
    takers = [lg for lg in trainer.loggers if isinstance(lg, (TensorBoardLogger, MLFlowLogger))]
    if not takers or not trainer.is_global_zero:
        return
    figure, step = draw(), trainer.global_step
    for logger in takers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(tag, figure, step, close=False)
        else:
            logger.experiment.log_figure(logger.run_id, figure, f"dashboard/{tag}/step{step:06d}.png")
