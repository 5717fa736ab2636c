"""Every argument of Lightning's Trainer, from its signature, passed on the command line with a valid, non-default
value (debug config, synthetic data): it works, or stops before training with one message (exit 2, no traceback).
A Trainer argument Lightning adds later fails `test_every_trainer_argument_has_a_row` until it gets a row here."""

from __future__ import annotations

import inspect

import lightning as L
import pytest
from conftest import error_of

# name -> the flags to pass (one valid non-default value) and what must happen: "works", or "refused: <words of
# the message>". Arguments that cannot apply on this machine are in NOT_HERE with the reason.
ROWS: dict[str, tuple[list[str], str]] = {
    "accelerator": (["cpu"], "works"),
    "strategy": (["ddp", "--trainer.devices", "1"], "works"),
    "devices": (["1"], "works"),
    "num_nodes": (["2"], "refused: needs a launcher that starts the other node"),
    "precision": (["bf16-mixed"], "works"),
    "logger": (["CSVLogger"], "works"),
    "callbacks": (
        ["EarlyStopping", "--trainer.callbacks.monitor", "val/acc", "--trainer.callbacks.mode", "max"],
        "works",
    ),  # fmt: skip
    "fast_dev_run": (["true"], "works"),
    "max_epochs": (["-1", "--trainer.max_steps", "30"], "works"),
    "min_epochs": (["3"], "works"),
    "max_steps": (["5"], "works"),
    "min_steps": (["30"], "works"),
    "max_time": (["00:00:00:30"], "works"),
    "limit_train_batches": (["3"], "works"),
    # validation is one batch of 5000 (data.eval_batch_size): a fraction of it is no batch, which Lightning refuses
    "limit_val_batches": (["0.5"], "refused: Please increase the `limit_val_batches`"),
    "limit_test_batches": (["1"], "works"),
    "limit_predict_batches": (["1"], "works"),
    "overfit_batches": (["2"], "works"),
    "val_check_interval": (["0.5"], "works"),
    "check_val_every_n_epoch": (["2"], "works"),
    "num_sanity_val_steps": (["0"], "works"),
    "log_every_n_steps": (["1"], "works"),
    "enable_checkpointing": (["false"], "works"),
    "enable_progress_bar": (["true"], "works"),
    "enable_model_summary": (["false"], "works"),
    "accumulate_grad_batches": (["2"], "works"),
    "gradient_clip_val": (["1.0"], "works"),
    "gradient_clip_algorithm": (["value", "--trainer.gradient_clip_val", "0.5"], "works"),
    "deterministic": (["true"], "works"),
    "benchmark": (["true"], "works"),
    "inference_mode": (["false"], "works"),
    "use_distributed_sampler": (["false"], "works"),
    "profiler": (["simple"], "works"),
    "detect_anomaly": (["true"], "works"),
    "barebones": (["true"], "refused: barebones"),
    "plugins": (["lightning.fabric.plugins.environments.LightningEnvironment"], "works"),
    "sync_batchnorm": (["true"], "works"),
    "reload_dataloaders_every_n_epochs": (["1"], "works"),
    "default_root_dir": (["elsewhere"], "works"),
    "enable_autolog_hparams": (["false"], "works"),
}
NOT_HERE = {
    "model_registry": "uploads the model to Lightning AI's model registry: needs an account and the network",
}


TRAINER_ARGUMENTS = set(inspect.signature(L.Trainer).parameters)  # of the installed Lightning (2.5 has fewer)


def test_every_trainer_argument_has_a_row() -> None:
    missing = TRAINER_ARGUMENTS - set(ROWS) - set(NOT_HERE)
    assert not missing, f"Trainer arguments without a row: {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(set(ROWS) & TRAINER_ARGUMENTS))
def test_trainer_argument_works_or_is_one_message(cli, capsys, name: str) -> None:
    flags, expected = ROWS[name]
    args = [f"--trainer.{name}", *flags]
    if expected == "works":
        cli(*args)
    else:
        err = error_of(capsys, cli, *args)
        assert expected.removeprefix("refused: ") in err


@pytest.mark.parametrize("flag", ["--optimizer", "--lr_scheduler"])
def test_lightning_clis_automatic_optimizer_arguments_are_not_offered(cli, capsys, flag: str) -> None:
    """They trained Adam while hparams.yaml recorded the model's sgd; the model's own `--model.optimizer` is the one
    way, recorded truthfully."""
    err = error_of(capsys, cli, flag, "Adam")
    assert flag in err
    assert "Traceback" not in err
