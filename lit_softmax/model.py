"""Softmax regression: one nn.Linear(784, 10) trained with cross-entropy, as a LightningModule."""

from __future__ import annotations

import math
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lit_softmax.errors import ConfigError

NUM_PIXELS = 28 * 28
# Floor added to each pixel's std before dividing: border pixels are almost always 0, and dividing by
# their tiny std would blow up noise. 0.05 (in [0, 1] units) was the best of {0.02, 0.05, 0.1, 0.2, 0.5}
# on the validation split.
STD_FLOOR = 0.05


class SoftmaxRegression(L.LightningModule):
    def __init__(
        self,
        num_classes: int = 10,
        normalize: Literal["none", "global", "per_pixel"] = "per_pixel",
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: float = 0.1,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        label_smoothing: float = 0.0,
        scheduler: Literal["constant", "cosine"] = "constant",
        warmup_steps: int = 0,
    ) -> None:
        """
        Args:
            num_classes: output classes (Fashion-MNIST has 10).
            normalize: input standardisation, computed from the training split at `fit` start and stored
                as buffers in the checkpoint: "none" feeds [0, 1] pixels as the original script did,
                "global" uses one mean/std, "per_pixel" one per pixel (best conditioned).
            optimizer: "sgd" (with `momentum`/`nesterov`) or "adamw".
            lr: peak learning rate.
            momentum: SGD momentum (ignored by AdamW).
            nesterov: Nesterov momentum for SGD.
            weight_decay: L2 penalty on the weights (never on the bias), i.e. the regulariser of
                L2-regularised logistic regression (with adamw: decoupled weight decay).
            label_smoothing: cross-entropy label smoothing for the training loss (val/test loss is plain CE).
            scheduler: "constant", or "cosine" decay to 0 over the whole run, stepped every optimizer step.
            warmup_steps: linear warm-up steps before the schedule.
        """
        super().__init__()
        checks = [
            (num_classes >= 2, f"model.num_classes must be >= 2, got {num_classes}"),
            (lr > 0 and math.isfinite(lr), f"model.lr must be a positive number, got {lr}; e.g. `--model.lr 0.1`"),
            (0 <= momentum < 1, f"model.momentum must be in [0, 1), got {momentum}"),
            (weight_decay >= 0, f"model.weight_decay must be >= 0, got {weight_decay}"),
            (0 <= label_smoothing < 1, f"model.label_smoothing must be in [0, 1), got {label_smoothing}"),
            (warmup_steps >= 0, f"model.warmup_steps must be >= 0, got {warmup_steps}"),
            (not nesterov or (optimizer == "sgd" and momentum > 0), "model.nesterov needs sgd and momentum > 0"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.save_hyperparameters()

        self.linear = nn.Linear(NUM_PIXELS, num_classes)
        # Input standardisation lives in the module, so a checkpoint alone classifies raw [0, 1] images.
        self.register_buffer("pixel_mean", torch.zeros(NUM_PIXELS))
        self.register_buffer("pixel_std", torch.ones(NUM_PIXELS))

        # One metric object per stage. Accuracy and loss are sums over samples inside the metric, synced
        # across processes by torchmetrics: exact under DDP and with an uneven last batch.
        # validate_args=False for training: the checks (labels in range, via torch.unique) wait for the device on
        # every step; the labels come from the verified dataset, and val/test keep the checks.
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.val_acc_best = MaxMetric()
        self._resumed_best: float | None = None  # val/acc_best of the run this one resumes (on_load_checkpoint)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, 28, 28) or (B, 784) float images in [0, 1] (what ToTensor gives) -> (B, num_classes) logits."""
        if not x.is_floating_point():
            raise TypeError(
                f"expected float images in [0, 1], got dtype {x.dtype}; convert uint8 pixels with `x.float() / 255`."
            )
        x = x.reshape(x.shape[0], -1)  # (B, 784)
        if x.shape[1] != self.linear.in_features:  # an attribute, not the global: TorchScript compiles this
            raise ValueError(
                f"expected images of shape (B, 1, 28, 28) or (B, 784), got {list(x.shape)} after flattening; "
                "resize inputs to 28x28 grayscale first."
            )
        # Standardisation folded into the layer, which stays linear in the raw pixels:
        #   ((x - mean) / std) @ W.T + b  ==  x @ (W / std).T + (b - (W / std) @ mean)
        # two (10, 784) ops per step instead of two passes over the (B, 784) batch (docs/performance.md);
        # gradients reach W and b exactly as through the two-pass form (tested against it).
        weight = self.linear.weight / self.pixel_std
        return F.linear(x, weight, self.linear.bias - weight @ self.pixel_mean)  # (B, 784) -> (B, num_classes)

    # ---- setup -------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage != "fit" or self.hparams.normalize == "none":
            return  # evaluation uses the statistics stored in the checkpoint
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "normalization_stats"):
            raise ConfigError(
                f"model.normalize={self.hparams.normalize!r} needs training-set statistics from "
                "FashionMNISTDataModule; fit with `datamodule=FashionMNISTDataModule(...)` or set normalize='none'."
            )
        per_pixel = self.hparams.normalize == "per_pixel"
        mean, std = datamodule.normalization_stats(per_pixel=per_pixel)
        if per_pixel:
            std = std + STD_FLOOR
        self.pixel_mean.copy_(mean)
        self.pixel_std.copy_(std)

    def on_train_start(self) -> None:
        # The sanity-check validation ran on two batches only; its accuracy must not become the "best".
        self.val_loss.reset()
        self.val_acc.reset()
        self.val_acc_best.reset()
        if self._resumed_best is not None:  # a resumed run: its best is the whole run's, not this segment's
            self.val_acc_best.update(torch.tensor(self._resumed_best))

    # ---- steps -------------------------------------------------------------------------------------
    def model_step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, logits, labels) of one batch, shared by training, validation and test."""
        x, y = batch
        logits = self(x)
        # Label smoothing regularises training only; val/test report plain cross-entropy, comparable across runs.
        smoothing = self.hparams.label_smoothing if self.training else 0.0
        return F.cross_entropy(logits, y, label_smoothing=smoothing), logits, y

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, logits, y = self.model_step(batch)
        self.train_acc.update(logits, y)
        # Logged every `log_every_n_steps`, read from the device only then; no prog_bar=True, which would read it
        # after every step (the bar shows the DivergenceGuard's mean loss instead: lit_softmax/callbacks.py).
        self.log("train/loss", loss)
        return loss

    def on_train_epoch_end(self) -> None:
        # Logged once an epoch rather than from every step (each self.log call costs ~0.3 ms here): Lightning
        # computes the metric (synced across processes) and resets it.
        self.log("train/acc", self.train_acc)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        loss, logits, y = self.model_step(batch)
        self.val_loss.update(loss, weight=len(y))  # a sample-weighted mean: the last batch may be smaller
        self.val_acc.update(logits, y)
        self.log("val/loss", self.val_loss)
        self.log("val/acc", self.val_acc, prog_bar=True)
        return {"loss": loss, "logits": logits}  # callbacks (the dashboard) read the logits

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best.update(self.val_acc.compute())  # compute() is synced across processes
        # The value is already identical on every rank; "max" keeps it bit-exact where a mean could round.
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, reduce_fx="max")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        loss, logits, y = self.model_step(batch)
        self.test_loss.update(loss, weight=len(y))
        self.test_acc.update(logits, y)
        self.log("test/loss", self.test_loss)
        self.log("test/acc", self.test_acc)
        return {"loss": loss, "logits": logits}

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).float().softmax(dim=-1)  # (B, 10) probabilities: the one place a user sees them

    # ---- checkpoints -------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Metric states are not part of the state_dict: the best so far travels as a plain number.
        if self.val_acc_best.update_count:
            checkpoint["val_acc_best"] = float(self.val_acc_best.compute())

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._resumed_best = checkpoint.get("val_acc_best")

    # ---- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self):
        return self.optimizer_config(total_steps=self.trainer.estimated_stepping_batches)

    def optimizer_config(self, total_steps: int):
        """The optimizer, and the LR schedule for a run of `total_steps` optimizer steps."""
        hp = self.hparams
        # L2 on the weights only: penalising the bias would pull class priors towards uniform.
        groups = [
            {"params": [self.linear.weight], "weight_decay": hp.weight_decay},
            {"params": [self.linear.bias], "weight_decay": 0.0},
        ]
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov)
        else:
            optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        if hp.scheduler == "constant" and hp.warmup_steps == 0:
            return optimizer
        if math.isinf(total_steps) and hp.scheduler == "cosine":  # max_epochs -1 without max_steps: no end
            raise ConfigError(
                "model.scheduler=cosine decays over the whole run, but this run has no end (max_epochs -1 without "
                "max_steps): set `--trainer.max_steps N`, or `--model.scheduler constant`."
            )
        total, warmup, cosine = max(1, int(min(total_steps, 2**62))), hp.warmup_steps, hp.scheduler == "cosine"

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if not cosine:
                return 1.0
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
