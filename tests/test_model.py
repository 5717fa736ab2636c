"""SoftmaxRegression against independent references: float64 hand-written softmax-CE, autograd, checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_softmax import FashionMNISTDataModule, SoftmaxRegression
from lit_softmax.errors import ConfigError


def reference_loss(x, y, weight, bias, mean, std, label_smoothing=0.0):
    """Softmax cross-entropy written out by hand, in float64: -sum_c q_c log p_c, averaged over the batch."""
    x, weight, bias, mean, std = (t.double() for t in (x, weight, bias, mean, std))
    z = ((x.reshape(len(x), -1) - mean) / std) @ weight.T + bias  # (B, 10) logits
    z = z - z.max(dim=1, keepdim=True).values  # shift for stability; softmax is shift-invariant
    log_p = z - torch.log(torch.exp(z).sum(dim=1, keepdim=True))
    k = z.shape[1]
    q = torch.full_like(log_p, label_smoothing / k)
    q[torch.arange(len(y)), y] += 1 - label_smoothing
    return -(q * log_p).sum(dim=1).mean()


def model_with_stats(**kwargs) -> SoftmaxRegression:
    torch.manual_seed(0)
    model = SoftmaxRegression(**kwargs)
    model.pixel_mean.uniform_(0.1, 0.4)  # non-trivial normalisation buffers
    model.pixel_std.uniform_(0.2, 0.5)
    return model


def batch(n=32):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("shape", [(5, 1, 28, 28), (5, 784), (5, 28, 28)])
def test_logits_shape(shape) -> None:
    assert SoftmaxRegression()(torch.rand(shape)).shape == (5, 10)


def test_uint8_input_equals_float_input() -> None:
    model = model_with_stats()
    pixels = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    torch.testing.assert_close(model(pixels), model(pixels.float() / 255), rtol=1e-5, atol=1e-5)


def test_exactly_one_linear_layer() -> None:
    model = SoftmaxRegression()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 1
    assert linears[0].in_features == 784
    assert linears[0].out_features == 10
    assert sum(p.numel() for p in model.parameters()) == 784 * 10 + 10


def test_wrong_input_shape_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, 28, 28\) or \(B, 784\), got \(2, 3072\)"):
        SoftmaxRegression()(torch.rand(2, 3, 32, 32))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_training_loss_and_gradients_match_float64_reference(label_smoothing: float) -> None:
    model = model_with_stats(label_smoothing=label_smoothing)
    x, y = batch()
    loss, _ = model.training_loss(x, y)
    loss.backward()

    w = model.linear.weight.detach().double().requires_grad_()
    b = model.linear.bias.detach().double().requires_grad_()
    ref = reference_loss(x, y, w, b, model.pixel_mean, model.pixel_std, label_smoothing)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(model.linear.weight.grad.double(), w.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model.linear.bias.grad.double(), b.grad, rtol=1e-4, atol=1e-6)


def test_eval_loss_is_plain_cross_entropy_even_with_smoothing() -> None:
    model = model_with_stats(label_smoothing=0.2)
    x, y = batch()
    model.test_step((x, y), 0)
    ref = reference_loss(x, y, model.linear.weight, model.linear.bias, model.pixel_mean, model.pixel_std)
    assert model.test_loss.compute().item() == pytest.approx(ref.item(), rel=1e-5)
    acc = (model(x).argmax(1) == y).float().mean()
    assert model.test_acc.compute().item() == pytest.approx(acc.item())


def test_predict_returns_probabilities() -> None:
    model = model_with_stats()
    x, _ = batch(8)
    p = model.predict_step((x,), 0)
    assert p.shape == (8, 10)
    assert torch.allclose(p.sum(1), torch.ones(8))
    assert torch.equal(p.argmax(1), model(x).argmax(1))


def test_weight_decay_only_on_weights_and_cosine_reaches_zero() -> None:
    model = SoftmaxRegression(lr=0.5, momentum=0.9, weight_decay=1e-3, scheduler="cosine", warmup_steps=10)

    class FakeTrainer:
        estimated_stepping_batches = 100
        train_dataloader = None  # any loader: one SGD step per training_step call

    model.trainer = FakeTrainer()  # configure_optimizers only reads the step count
    config = model.configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-3, 0.0]
    assert opt.param_groups[0]["params"][0] is model.linear.weight
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.05)
    assert lrs[9] == pytest.approx(0.5)
    assert max(lrs) == pytest.approx(0.5)
    assert lrs[-1] < 0.001
    assert opt.param_groups[0]["lr"] == pytest.approx(0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -0.1}, r"model.lr must be a positive number, got -0.1"),
        ({"lr": 0.0}, r"model.lr must be a positive number"),
        ({"momentum": 1.0}, r"model.momentum must be in \[0, 1\)"),
        ({"weight_decay": -1e-4}, r"model.weight_decay must be >= 0"),
        ({"label_smoothing": 1.0}, r"model.label_smoothing must be in \[0, 1\)"),
        ({"nesterov": True}, r"model.nesterov needs sgd and momentum > 0"),
        ({"num_classes": 1}, r"model.num_classes must be >= 2"),
    ],
)
def test_bad_model_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SoftmaxRegression(**kwargs)


def fit_tiny(tmp_path: Path, synthetic_dir: Path, **model_kwargs) -> tuple[L.Trainer, SoftmaxRegression]:
    dm = FashionMNISTDataModule(data_dir=str(synthetic_dir), val_size=20, batch_size=32, download=False)
    model = SoftmaxRegression(lr=0.5, **model_kwargs)
    trainer = L.Trainer(
        max_epochs=3, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt")],
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    return trainer, model


def test_checkpoint_alone_classifies_images(tmp_path: Path, synthetic_dir: Path) -> None:
    trainer, model = fit_tiny(tmp_path, synthetic_dir)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = SoftmaxRegression.load_from_checkpoint(path, map_location="cpu").eval()
    model.eval()
    x, _ = batch(16)
    assert torch.equal(loaded(x), model(x))
    # The per-pixel statistics came from the data and travel inside the checkpoint.
    assert torch.equal(loaded.pixel_mean, model.pixel_mean)
    assert not torch.all(loaded.pixel_mean == 0)
    assert loaded.hparams.lr == 0.5


@pytest.mark.parametrize("normalize", ["none", "global", "per_pixel"])
def test_normalisation_modes(tmp_path: Path, synthetic_dir: Path, normalize: str) -> None:
    _, model = fit_tiny(tmp_path, synthetic_dir, normalize=normalize)
    dm = FashionMNISTDataModule(data_dir=str(synthetic_dir), val_size=20, download=False)
    mean, std = dm.normalization_stats()
    if normalize == "none":
        assert torch.all(model.pixel_mean == 0)
        assert torch.all(model.pixel_std == 1)
    elif normalize == "global":
        pixels = dm.train_set.images.float() / 255  # the independent reference: over all pixels at once
        assert torch.allclose(model.pixel_mean, pixels.mean().expand(784), atol=1e-5)
        assert torch.allclose(model.pixel_std, pixels.std().expand(784), atol=1e-4)
    else:
        assert torch.allclose(model.pixel_mean, mean)
        assert torch.all(model.pixel_std > std)
    # The synthetic classes are linearly separable: every mode must learn them.
    assert trainer_free_accuracy(model, dm) > 0.9


def trainer_free_accuracy(model: SoftmaxRegression, dm: FashionMNISTDataModule) -> float:
    dm.setup("test")
    x = dm.test_set.images.float() / 255
    return (model(x).argmax(1) == dm.test_set.labels).float().mean().item()


def fit_grouped(tmp_path: Path, synthetic_dir: Path, steps_per_execution: int, max_steps: int = -1, **model_kwargs):
    torch.manual_seed(0)
    model = SoftmaxRegression(normalize="none", **model_kwargs)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    dm = FashionMNISTDataModule(data_dir=str(synthetic_dir), val_size=20, batch_size=16, download=False,
                                steps_per_execution=steps_per_execution)  # fmt: skip
    trainer = L.Trainer(max_epochs=2, max_steps=max_steps, default_root_dir=tmp_path, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    return trainer, model, start, dm


def test_sgd_matches_a_plain_pytorch_loop_whatever_the_group_size(tmp_path: Path, synthetic_dir: Path) -> None:
    """180 training images, batch 16: 12 SGD steps an epoch, handed to training_step 5 at a time (5, 5, 2)."""
    trainer, model, start, dm = fit_grouped(tmp_path, synthetic_dir, 5, lr=0.3, momentum=0.9)
    # The independent reference: torch's own DistributedSampler order, batches of 16, torch.optim.SGD.
    reference = torch.nn.Linear(784, 10)
    reference.load_state_dict({"weight": start["linear.weight"], "bias": start["linear.bias"]})
    opt = torch.optim.SGD(reference.parameters(), lr=0.3, momentum=0.9)
    seed = int(os.getenv("PL_GLOBAL_SEED", 0))
    order = torch.utils.data.DistributedSampler(dm.train_set, num_replicas=1, rank=0, seed=seed)
    for epoch in range(2):
        order.set_epoch(epoch)
        correct = 0  # training accuracy of the epoch: predictions made just before each update
        for idx in torch.tensor(list(order)).split(16):
            x = dm.train_set.images[idx].reshape(len(idx), -1).float() / 255
            logits = reference(x)
            correct += (logits.argmax(1) == dm.train_set.labels[idx]).sum().item()
            loss = torch.nn.functional.cross_entropy(logits, dm.train_set.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.testing.assert_close(model.linear.weight, reference.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.linear.bias, reference.bias, rtol=1e-5, atol=1e-6)
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


def test_max_steps_counts_sgd_steps_even_mid_group(tmp_path: Path, synthetic_dir: Path) -> None:
    trainer, *_ = fit_grouped(tmp_path, synthetic_dir, 4, max_steps=7)
    assert trainer.global_step == 7
