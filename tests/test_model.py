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


def test_uint8_input_is_a_clear_error() -> None:
    pixels = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    with pytest.raises(
        TypeError, match=r"expected float images in \[0, 1\], got dtype torch.uint8; .*`x.float\(\) / 255`"
    ):
        SoftmaxRegression()(pixels)


def test_exactly_one_linear_layer() -> None:
    model = SoftmaxRegression()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 1
    assert linears[0].in_features == 784
    assert linears[0].out_features == 10
    assert sum(p.numel() for p in model.parameters()) == 784 * 10 + 10


def test_wrong_input_shape_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, 28, 28\) or \(B, 784\), got \[2, 3072\]"):
        SoftmaxRegression()(torch.rand(2, 3, 32, 32))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_training_loss_and_gradients_match_float64_reference(label_smoothing: float) -> None:
    model = model_with_stats(label_smoothing=label_smoothing).train()
    x, y = batch()
    loss, logits, labels = model.model_step((x, y))
    assert labels is y
    torch.testing.assert_close(logits, model(x))
    loss.backward()

    w = model.linear.weight.detach().double().requires_grad_()
    b = model.linear.bias.detach().double().requires_grad_()
    ref = reference_loss(x, y, w, b, model.pixel_mean, model.pixel_std, label_smoothing)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(model.linear.weight.grad.double(), w.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model.linear.bias.grad.double(), b.grad, rtol=1e-4, atol=1e-6)


def test_eval_loss_is_plain_cross_entropy_even_with_smoothing() -> None:
    model = model_with_stats(label_smoothing=0.2).eval()  # Lightning puts the model in eval mode for test
    x, y = batch()
    outputs = model.test_step((x, y), 0)
    torch.testing.assert_close(outputs["logits"], model(x))
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
    config = model.optimizer_config(total_steps=100)
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


def plain_pytorch_sgd(
    dm, start: dict, epochs: int, lr: float, momentum: float = 0.0, clip: float | None = None, accumulate: int = 1
) -> tuple[torch.nn.Linear, int]:
    """The independent reference: torch.optim.SGD on batches of 16 in torch's DistributedSampler order, gradient
    clipping and accumulation written out by hand. Returns the layer and the count of correct training
    predictions of the last epoch (each made just before the update it contributes to)."""
    reference = torch.nn.Linear(784, 10)
    reference.load_state_dict({"weight": start["linear.weight"], "bias": start["linear.bias"]})
    opt = torch.optim.SGD(reference.parameters(), lr=lr, momentum=momentum)
    order = torch.utils.data.DistributedSampler(dm.train_set, num_replicas=1, rank=0,
                                                seed=int(os.getenv("PL_GLOBAL_SEED", 0)))  # fmt: skip
    for epoch in range(epochs):
        order.set_epoch(epoch)
        correct = 0
        batches = torch.tensor(list(order)).split(16)
        for i, idx in enumerate(batches):
            x = dm.train_set.images[idx].reshape(len(idx), -1).float() / 255
            logits = reference(x)
            correct += (logits.argmax(1) == dm.train_set.labels[idx]).sum().item()
            (torch.nn.functional.cross_entropy(logits, dm.train_set.labels[idx]) / accumulate).backward()
            if (i + 1) % accumulate == 0 or i + 1 == len(batches):
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(reference.parameters(), clip)
                opt.step()
                opt.zero_grad()
    return reference, correct


def fit_synthetic(tmp_path: Path, synthetic_dir: Path, **trainer_kwargs):
    torch.manual_seed(0)
    model = SoftmaxRegression(normalize="none", lr=0.3, momentum=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    dm = FashionMNISTDataModule(data_dir=str(synthetic_dir), val_size=20, batch_size=16, download=False)
    trainer = L.Trainer(max_epochs=2, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, **trainer_kwargs)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    return trainer, model, start, dm


@pytest.mark.parametrize(
    "trainer_kwargs",
    [{}, {"gradient_clip_val": 0.05}, {"accumulate_grad_batches": 3}],
    ids=["plain", "gradient-clipping", "accumulation"],
)
def test_training_equals_a_plain_pytorch_loop(tmp_path: Path, synthetic_dir: Path, trainer_kwargs: dict) -> None:
    """180 training images, batch 16: 12 optimizer steps an epoch (4 with accumulation over 3), 2 epochs."""
    trainer, model, start, dm = fit_synthetic(tmp_path, synthetic_dir, **trainer_kwargs)
    reference, correct = plain_pytorch_sgd(
        dm, start, epochs=2, lr=0.3, momentum=0.9,
        clip=trainer_kwargs.get("gradient_clip_val"), accumulate=trainer_kwargs.get("accumulate_grad_batches", 1),
    )  # fmt: skip
    torch.testing.assert_close(model.linear.weight, reference.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.linear.bias, reference.bias, rtol=1e-5, atol=1e-6)
    assert trainer.global_step == 2 * 12 // trainer_kwargs.get("accumulate_grad_batches", 1)
    assert trainer.callback_metrics["train/acc"].item() == pytest.approx(correct / len(dm.train_set))


def test_gradient_clipping_changes_the_result(tmp_path: Path, synthetic_dir: Path) -> None:
    """The clipping case above is not vacuous: with this small a threshold, clipping changes the weights."""
    clipped = fit_synthetic(tmp_path / "c", synthetic_dir, gradient_clip_val=0.05)[1]
    plain = fit_synthetic(tmp_path / "p", synthetic_dir)[1]
    assert not torch.allclose(clipped.linear.weight, plain.linear.weight, atol=1e-3)
