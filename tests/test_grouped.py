"""The opt-in grouped-steps path (lit_softmax/grouped.py): same SGD steps as one step per call, only faster."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO, need_real_data, real_data, run_cli
from test_model import plain_pytorch_sgd

from lit_softmax import FashionMNISTDataModule, SoftmaxRegression
from lit_softmax.errors import ConfigError
from lit_softmax.grouped import GroupedFashionMNIST, GroupedSoftmaxRegression


def grouped_dm(synthetic_dir: Path, steps_per_call: int, **kwargs) -> GroupedFashionMNIST:
    dm = GroupedFashionMNIST(steps_per_call=steps_per_call, data_dir=str(synthetic_dir), val_size=20,
                             batch_size=16, download=False, **kwargs)  # fmt: skip
    dm.setup("fit")
    return dm


def flat_order(loader) -> list[list[int]]:
    """Labels of each mini-batch, in the order the loader hands them out (groups cut into mini-batches of 16)."""
    return [y.tolist() for _, labels in loader for y in labels.split(16)]


def test_groups_of_minibatches_keep_the_order(synthetic_dir: Path) -> None:
    one = FashionMNISTDataModule(data_dir=str(synthetic_dir), val_size=20, batch_size=16, download=False)
    one.setup("fit")
    five = grouped_dm(synthetic_dir, 5)
    groups = list(five.train_dataloader())
    assert [len(y) for _, y in groups] == [80, 80, 20]  # 12 mini-batches of 16 (the last of 4): 5 + 5 + 2
    assert len(five.train_dataloader()) == 3  # what Lightning counts as batches per epoch
    assert flat_order(five.train_dataloader()) == [y.tolist() for _, y in one.train_dataloader()]


def test_resume_position_is_in_groups_and_needs_the_same_grouping(synthetic_dir: Path) -> None:
    dm = grouped_dm(synthetic_dir, 5)
    loader = dm.train_dataloader()
    full = flat_order(loader)
    loader.sampler.batches_done = 1  # the fit loop finished one group of this epoch
    state = loader.state_dict()
    assert (state["batches_done"], state["num_batches"], state["steps_per_call"]) == (1, 3, 5)
    resumed_loader = grouped_dm(synthetic_dir, 5).train_dataloader()
    resumed_loader.load_state_dict(state)
    assert flat_order(resumed_loader) == full[5:]  # the rest of the epoch, nothing twice
    assert flat_order(resumed_loader) == full  # and the next epoch is whole again
    with pytest.raises(ConfigError, match=r"data.steps_per_call=5, but this run has 4: resume with "
                                          r"`--data.steps_per_call 5`"):  # fmt: skip
        grouped_dm(synthetic_dir, 4).train_dataloader().load_state_dict(state)
    # At the end of an epoch there is no position to keep: another grouping may go on from there.
    regrouped = grouped_dm(synthetic_dir, 4).train_dataloader()
    regrouped.load_state_dict({**state, "batches_done": 3})  # no error
    regrouped.sampler.set_epoch(1)  # what Lightning does next
    assert [len(y) for _, y in regrouped] == [64, 64, 52]


def test_bad_grouping_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"data.steps_per_call must be >= 1, got 0"):
        GroupedFashionMNIST(steps_per_call=0)


def fit_grouped(tmp_path: Path, synthetic_dir: Path, steps_per_call: int, max_steps: int = -1, **model_kwargs):
    torch.manual_seed(0)
    model = GroupedSoftmaxRegression(normalize="none", **model_kwargs)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    dm = GroupedFashionMNIST(steps_per_call=steps_per_call, data_dir=str(synthetic_dir), val_size=20,
                             batch_size=16, download=False)  # fmt: skip
    trainer = L.Trainer(max_epochs=2, max_steps=max_steps, default_root_dir=tmp_path, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    return trainer, model, start, dm


def test_grouped_sgd_matches_a_plain_pytorch_loop(tmp_path: Path, synthetic_dir: Path) -> None:
    """180 training images, batch 16: 12 SGD steps an epoch, handed to training_step 5 at a time (5, 5, 2)."""
    trainer, model, start, dm = fit_grouped(tmp_path, synthetic_dir, 5, lr=0.3, momentum=0.9)
    reference, correct = plain_pytorch_sgd(dm, start, epochs=2, lr=0.3, momentum=0.9)
    torch.testing.assert_close(model.linear.weight, reference.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.linear.bias, reference.bias, rtol=1e-5, atol=1e-6)
    assert trainer.global_step == 24
    assert trainer.callback_metrics["train/acc"].item() == pytest.approx(correct / len(dm.train_set))


def test_group_size_changes_nothing_but_speed(tmp_path: Path, synthetic_dir: Path) -> None:
    # Cosine with warm-up: the schedule's length must be counted in SGD steps, not training_step calls.
    kwargs = {"lr": 0.3, "scheduler": "cosine", "warmup_steps": 3}
    one = fit_grouped(tmp_path / "1", synthetic_dir, 1, **kwargs)
    four = fit_grouped(tmp_path / "4", synthetic_dir, 4, **kwargs)
    assert one[0].global_step == four[0].global_step == 24
    assert torch.equal(one[1].linear.weight, four[1].linear.weight)
    assert torch.equal(one[1].linear.bias, four[1].linear.bias)
    assert four[1].optimizers().param_groups[0]["lr"] == pytest.approx(0.0)  # the cosine ended exactly at the end
    # And the textbook pair (automatic optimization, one step per call) lands on the same weights.
    torch.manual_seed(0)
    textbook = SoftmaxRegression(normalize="none", **kwargs)
    dm = FashionMNISTDataModule(data_dir=str(synthetic_dir), val_size=20, batch_size=16, download=False)
    L.Trainer(max_epochs=2, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
              enable_model_summary=False, enable_checkpointing=False).fit(textbook, datamodule=dm)  # fmt: skip
    torch.testing.assert_close(textbook.linear.weight, four[1].linear.weight, rtol=1e-5, atol=1e-6)


def test_max_steps_counts_sgd_steps_even_mid_group(tmp_path: Path, synthetic_dir: Path) -> None:
    trainer, *_ = fit_grouped(tmp_path, synthetic_dir, 4, max_steps=7)
    assert trainer.global_step == 7


@pytest.mark.slow
def test_ddp_groups_of_steps_reduce_gradients_every_step(tmp_path: Path) -> None:
    """Several SGD steps per training_step under DDP (one forward through DDP, several backward passes): each
    backward must all-reduce, so the weights equal those of the textbook pair. 10 steps: groups of 4, 4, a cut 2."""
    need_real_data()
    weights = {}
    for name, extra in (
        ("textbook", []),
        ("grouped", ["--model.class_path", "lit_softmax.grouped.GroupedSoftmaxRegression",
                     "--data.class_path", "lit_softmax.grouped.GroupedFashionMNIST", "--data.steps_per_call", "4"]),
    ):  # fmt: skip
        cwd = tmp_path / name
        cwd.mkdir()
        fit = run_cli(
            "fit", "--config", str(REPO / "configs/fashion_mnist.yaml"), "--config", str(REPO / "configs/ddp_cpu.yaml"),
            *extra, "--data.data_dir", real_data(cwd), "--data.batch_size", "512", "--trainer.max_steps", "10",
            "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0", "--test_after_fit", "false",
            cwd=cwd,
        )  # fmt: skip
        assert fit.returncode == 0, fit.stderr[-3000:]
        state = torch.load(next(cwd.rglob("last.ckpt")), map_location="cpu", weights_only=True)
        assert state["global_step"] == 10
        weights[name] = state["state_dict"]["linear.weight"]
    torch.testing.assert_close(weights["grouped"], weights["textbook"], rtol=1e-5, atol=1e-6)
