"""Softmax regression: one nn.Linear(784, 10) trained with cross-entropy, as a LightningModule."""

from __future__ import annotations

import math
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError, MulticlassConfusionMatrix

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
            scheduler: "constant", or "cosine" decay to 0 over the whole run, stepped every batch.
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

        # Training accuracy: correct/seen are counted on the device once per group of steps (a torchmetrics
        # update was ~60 us a step) and handed over once per epoch; a sample-weighted mean is exact across processes.
        self.train_acc = MeanMetric()
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        # Sample-weighted means: exact under DDP with uneven last batches (a mean of batch means is not).
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.val_acc_best = MaxMetric()
        # For the TensorBoard dashboard (lit_softmax/dashboard.py): confusion matrices and calibration.
        self.val_confmat = MulticlassConfusionMatrix(num_classes)
        self.test_confmat = MulticlassConfusionMatrix(num_classes)
        self.val_ece = MulticlassCalibrationError(num_classes, n_bins=15)
        self.test_ece = MulticlassCalibrationError(num_classes, n_bins=15)
        # Running sums of the training loss between two logging steps and of correct predictions over the epoch
        # (see training_step). A plain dict, mutated in place: assigning attributes on an nn.Module goes through
        # its slow __setattr__ every step.
        self._loss_window: dict = {"sum": 0.0, "steps": 0, "correct": 0, "seen": 0}
        # Standardisation is the identity for "none": skip folding it in (two ops and their backward per step).
        self._fold = normalize != "none"
        # Each training_step takes one SGD step per mini-batch it is given (FashionMNISTDataModule's
        # steps_per_execution), so it drives the optimizer itself: Lightning's manual optimization.
        self.automatic_optimization = False

    def __setattr__(self, name: str, value) -> None:
        # Lightning sets `_current_fx_name` around every hook call, ~20 times per SGD step; nn.Module's
        # __setattr__ first checks whether it is a parameter, buffer or submodule. For this plain string it
        # never is, so store it directly.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, 28, 28) or (B, 784) images -> (B, num_classes) logits.

        Float images are in [0, 1] (what ToTensor gives, and what the DataModule's training batches hold); uint8
        images in [0, 255] are accepted too, which is what its evaluation batches hold: 4x fewer bytes per batch,
        scaled inside the layer (see below).
        """
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != NUM_PIXELS:
            raise ValueError(
                f"expected images of shape (B, 1, 28, 28) or (B, 784), got {tuple(x.shape)} after flattening; "
                "resize inputs to 28x28 grayscale first."
            )
        # Standardisation folded into the layer:
        #   ((x - mean) / std) @ W.T + b  ==  x @ (W / std).T + (b - (W / std) @ mean)
        # one (10, 784) op per step instead of two passes over the (B, 784) batch; gradients reach W and b alike.
        weight, bias = self.linear.weight, self.linear.bias
        if self._fold:
            weight = weight / self.pixel_std
            bias = bias - weight @ self.pixel_mean
        if x.dtype == torch.uint8:
            x, weight = x.to(weight.dtype), weight / 255
        return F.linear(x, weight, bias)

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

    def on_fit_start(self) -> None:
        # batch_size is per process (Lightning's convention), so say what one optimizer step really sees.
        trainer = self.trainer
        data_hparams = getattr(getattr(trainer, "datamodule", None), "hparams", {})
        per_process = data_hparams.get("batch_size")
        if per_process is None:
            return
        effective = per_process * trainer.world_size  # gradients are all-reduced every step; no accumulation
        info = {"effective_batch_size": effective, "world_size": trainer.world_size}
        for logger in trainer.loggers:
            # All of them again: TensorBoard's HPARAMS tab shows the last set a run logged.
            logger.log_hyperparams({**self.hparams, **data_hparams, **info})
        rank_zero_info(
            f"effective batch size {effective} = {per_process} per process x {trainer.world_size} processes; "
            f"peak lr {self.hparams.lr}"
        )

    def on_train_start(self) -> None:
        # The sanity-check validation ran on two batches only; its accuracy must not become the "best".
        self.val_acc.reset()
        self.val_loss.reset()
        self.val_acc_best.reset()

    # ---- steps -------------------------------------------------------------------------------------
    def training_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(loss, logits) of one mini-batch: cross-entropy on the logits, with the configured label smoothing."""
        logits = self(x)
        return F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing), logits

    def training_step(self, batch: list[tuple[Tensor, Tensor]] | tuple[Tensor, Tensor], batch_idx: int) -> None:
        """One SGD step per mini-batch: `batch` is a list of (x, y) mini-batches (the DataModule's
        `steps_per_execution` of them), or a single (x, y) from any other loader."""
        batches = [batch] if isinstance(batch[0], Tensor) else batch
        trainer = self.trainer
        if trainer.max_steps >= 0:  # max_steps counts SGD steps, so a run may end in the middle of a group
            batches = batches[: max(0, trainer.max_steps - self.global_step)]
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        window = self._loss_window
        losses, predictions = [], []
        for x, y in batches:
            loss, logits = self.training_loss(x, y)
            window["last"] = loss.detach()  # read by DivergenceGuard before the optimizer applies this step
            losses.append(window["last"])
            predictions.append(logits.detach())
            optimizer.zero_grad()
            self.manual_backward(loss)  # precision scaling and DDP's gradient all-reduce, as in automatic mode
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        if not losses:
            return
        # Bookkeeping once per group, not per step: a handful of tensor ops either way, on the device (no sync).
        labels = torch.cat([y for _, y in batches])
        window["correct"] = (torch.cat(predictions).argmax(1) == labels).sum() + window["correct"]
        window["seen"] += len(labels)
        window["sum"] = torch.stack(losses).sum() + window["sum"]
        window["steps"] += len(losses)
        # `self.log` costs ~0.5 ms a call, more than an SGD step at batch 64, and the logger only writes every
        # `log_every_n_steps` batches anyway. So: accumulate on the device, and log the mean of the window on
        # exactly the batches the logger writes: the same curve in TensorBoard, smoother, cheaper.
        if trainer._logger_connector.should_update_logs:
            self.log("train/loss", window["sum"] / window["steps"], prog_bar=True)
            window["sum"], window["steps"] = 0.0, 0

    def on_train_epoch_start(self) -> None:
        self._loss_window.update(correct=0, seen=0)

    def on_train_epoch_end(self) -> None:
        window = self._loss_window
        if window["seen"]:
            self.train_acc.update(window["correct"] / window["seen"], weight=window["seen"])
        # Logging the Metric object (not a tensor) lets Lightning compute it, synced across processes, and reset it.
        self.log("train/acc", self.train_acc)

    def on_validation_epoch_start(self) -> None:
        self.val_confmat.reset()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_loss.update(F.cross_entropy(logits, y), weight=len(y))
        self.val_acc.update(logits, y)
        self.val_confmat.update(logits, y)
        self.val_ece.update(logits.float(), y)

    def on_validation_epoch_end(self) -> None:
        acc = self.val_acc.compute()  # synced across processes by torchmetrics: identical on every rank
        self.log("val/loss", self.val_loss)
        self.log("val/acc", self.val_acc, prog_bar=True)
        self.log("val/ece", self.val_ece)
        if not self.trainer.sanity_checking:
            self.val_acc_best.update(acc)
            # Already identical on every rank; "max" keeps it bit-exact where a mean of N copies could round.
            self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, reduce_fx="max")
            self.log("hp_metric", self.val_acc_best.compute(), sync_dist=True, reduce_fx="max")

    def on_test_epoch_start(self) -> None:
        self.test_confmat.reset()

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.test_loss.update(F.cross_entropy(logits, y), weight=len(y))
        self.test_acc.update(logits, y)
        self.test_confmat.update(logits, y)
        self.test_ece.update(logits.float(), y)

    def on_test_epoch_end(self) -> None:
        self.log("test/loss", self.test_loss)
        self.log("test/acc", self.test_acc)
        self.log("test/ece", self.test_ece)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).float().softmax(dim=-1)  # (B, 10) probabilities: the one place a user sees them

    # ---- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self):
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
        total = max(1, self._total_sgd_steps())
        warmup, cosine = hp.warmup_steps, hp.scheduler == "cosine"

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if not cosine:
                return 1.0
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _total_sgd_steps(self) -> int:
        """SGD steps in the whole run, for the schedule. Lightning's `estimated_stepping_batches` counts
        training_step calls; each takes `steps_per_execution` SGD steps (the last of an epoch possibly fewer)."""
        trainer = self.trainer
        calls = trainer.estimated_stepping_batches  # also sets up the train loader, read below
        sampler = getattr(trainer.train_dataloader, "sampler", None)
        per_call, per_epoch = getattr(sampler, "steps_per_execution", 1), getattr(sampler, "num_batches", None)
        if per_call == 1 or per_epoch is None or trainer.max_epochs in (None, -1):
            return calls
        steps = min(int(trainer.num_training_batches) * per_call, per_epoch) * trainer.max_epochs
        return min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps
