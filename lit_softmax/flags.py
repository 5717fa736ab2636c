"""Trainer flags a Lightning user passes out of habit: reconciled with what every run of this project does, or
refused before anything runs with one message that says why (docs/flags.md; every argument of the
Trainer has a row in tests/test_trainer_args.py)."""

from __future__ import annotations

import os

from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.plugins.environments import (
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)

from lit_softmax.errors import ConfigError
from lit_softmax.run import class_of


def reconcile(config) -> None:
    """Before instantiation: make the always-on callbacks follow the Trainer's on/off flags, refuse what cannot run."""
    trainer = config["trainer"]
    if trainer.get("barebones"):
        raise ConfigError(
            "--trainer.barebones true turns off self.log, which this model's metrics use, and the logging and "
            "checkpoints every run writes. It is for measuring Lightning's own overhead: benchmarks/bench.py "
            "measures that (bare loop vs Lightning); drop the flag."
        )
    nodes = trainer.get("num_nodes") or 1
    if nodes > 1 and not _launched_by_a_cluster_tool():
        raise ConfigError(
            f"--trainer.num_nodes {nodes} needs a launcher that starts the other node(s) (torchrun --nnodes, SLURM "
            'srun, ...); started alone, this process would wait for them forever. See docs/scaling.md, "Multi-node".'
        )
    if trainer.get("enable_checkpointing") is False and "checkpoint" in config:
        # The `checkpoint` section always adds a ModelCheckpoint, which Lightning refuses next to
        # enable_checkpointing=False; one that saves nothing is what the flag asks for.
        config["checkpoint"]["save_top_k"], config["checkpoint"]["save_last"] = 0, False
        trainer["enable_checkpointing"] = True
    if trainer.get("enable_progress_bar") is False and trainer.get("callbacks"):
        # A config may bring its own progress bar (configs/fashion_mnist.yaml redraws every 10th batch);
        # `--trainer.enable_progress_bar false` then means "no bar" rather than Lightning's conflict error.
        trainer["callbacks"] = [c for c in trainer["callbacks"] if not _is_progress_bar(c)]


def check_with_model(model, trainer) -> None:
    """After instantiation: flags the model cannot honour."""
    if not model.automatic_optimization and (trainer.gradient_clip_val or trainer.accumulate_grad_batches > 1):
        raise ConfigError(
            f"{type(model).__name__} steps the optimizer itself (several SGD steps per training_step, "
            "configs/seed_recipe.yaml), so Lightning's gradient_clip_val / accumulate_grad_batches cannot apply. "
            "Drop those flags, or train the textbook model: leave out `model.class_path` and `data.class_path`."
        )


def _launched_by_a_cluster_tool() -> bool:
    detectors = (TorchElasticEnvironment, SLURMEnvironment, MPIEnvironment, LSFEnvironment)
    # By hand: every node started with the same command, NODE_RANK / WORLD_SIZE / MASTER_ADDR set (Lightning's way).
    return any(env.detect() for env in detectors) or "NODE_RANK" in os.environ or "WORLD_SIZE" in os.environ


def _is_progress_bar(callback) -> bool:
    cls = class_of(callback)
    return cls is not None and issubclass(cls, ProgressBar)
