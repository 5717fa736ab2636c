"""Writes the tutorial in both languages from one list of cells, so their code cells are the same by construction
(tests/test_notebooks.py checks it anyway), then executes both:

    python notebooks/build.py            # `make notebooks`: write softmax_regression{,.zh-CN}.ipynb and run them

Edit the text here, side by side: each markdown cell is a pair (English, Simplified Chinese).
"""

# ruff: noqa: E501  (prose in two languages: lines are cut where a sentence reads well, not at 120 columns)
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent

CELLS: list[tuple[str, str] | str] = [
    (
        """# Softmax regression, from the formula to Lightning

This notebook connects the maths of softmax regression to the code of this project, line by line. For an image
$\\mathbf{x}$ (784 pixel values), the model computes one **score** (logit) per class,
$s_i = \\mathbf{x}^\\top \\mathbf{w}_i + b_i$; the **softmax** turns the ten scores into probabilities
$p_i = e^{s_i} / \\sum_j e^{s_j}$; training minimises the **cross-entropy** $-\\log p_y$ of the true class $y$ by
**backpropagation**; the prediction is the class with the highest probability.

Everything below uses the package's own classes (`lit_softmax/model.py`, `lit_softmax/data.py`): no copy of the
model or data code. It runs top to bottom on a laptop CPU in about a minute. Every number in the text is computed
by the cell above it.""",
        """# Softmax 回归：从公式到 Lightning

这个 notebook 把 softmax 回归的数学和本项目的代码一一对应起来。对一张图像 $\\mathbf{x}$（784 个像素值），模型为每个类别
计算一个**得分**（logit）$s_i = \\mathbf{x}^\\top \\mathbf{w}_i + b_i$；**softmax 函数**把十个得分变成概率
$p_i = e^{s_i} / \\sum_j e^{s_j}$；训练时用**反向传播**最小化真实类别 $y$ 的**交叉熵损失** $-\\log p_y$；预测时取概率最大的类别。

下面所有代码都直接使用本项目的类（`lit_softmax/model.py`、`lit_softmax/data.py`），没有另抄一份模型或数据代码。
在笔记本电脑的 CPU 上从头到尾运行大约一分钟。正文里的每个数字都由它上方的代码单元算出。""",
    ),
    """import inspect
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from lit_softmax import CLASSES, FashionMNISTDataModule, SoftmaxRegression

warnings.filterwarnings("ignore", message=".*LeafSpec")  # Lightning 2.6 on torch >= 2.9, harmless
torch.manual_seed(0)
dm = FashionMNISTDataModule(data_dir="../data", batch_size=2048)  # finds Debian's copy, or `make data`'s
dm.prepare_data()
dm.setup("fit")
dm.setup("test")
print(f"train {len(dm.train_set):,}  validation {len(dm.val_set):,}  test {len(dm.test_set):,} images")""",
    (
        """## 1. The data

Fashion-MNIST: 28x28 grey images of ten kinds of garment, light on a black background. The DataModule carves a
fixed validation split out of the 60,000 training images (for choosing hyper-parameters) and keeps the official
10,000 test images apart. Three test images of each class:""",
        """## 1. 数据

Fashion-MNIST：十类服饰的 28x28 灰度图像，黑色背景上的浅色物体。DataModule 从 60,000 张训练图像中固定地划出一份验证集
（用来选超参数），官方的 10,000 张测试图像单独保留。每个类别的三张测试图像：""",
    ),
    """images, labels = dm.test_set.images, dm.test_set.labels  # uint8 (N, 28, 28), int64 (N,)
fig, axes = plt.subplots(3, 10, figsize=(13, 4.3))
for c in range(10):
    for row, i in enumerate((labels == c).nonzero().flatten()[:3]):
        axes[row, c].imshow(images[i], cmap="gray")
        axes[row, c].axis("off")
    axes[0, c].set_title(CLASSES[c], fontsize=10)
plt.show()""",
    (
        """## 2. The model is the formula

`SoftmaxRegression` holds one `nn.Linear(784, 10)`: the rows of its weight matrix $W$ are the ten vectors
$\\mathbf{w}_i$, its bias is $\\mathbf{b}$. With `normalize="none"` its `forward` is exactly
$\\mathbf{s} = W\\mathbf{x} + \\mathbf{b}$ for a batch of flattened images (`x @ W.T + b`). A fresh, untrained model:""",
        """## 2. 模型就是公式

`SoftmaxRegression` 里只有一个 `nn.Linear(784, 10)`：权重矩阵 $W$ 的每一行就是一个 $\\mathbf{w}_i$，偏置就是
$\\mathbf{b}$。设 `normalize="none"` 时，它的 `forward` 对一批展平的图像恰好计算 $\\mathbf{s} = W\\mathbf{x} + \\mathbf{b}$
（代码里写作 `x @ W.T + b`）。先看一个刚初始化、还没训练的模型：""",
    ),
    """model = SoftmaxRegression(normalize="none")
x = images[:5].float().div(255).reshape(5, -1)  # five images as 784-vectors in [0, 1] (what ToTensor gives)
y = labels[:5]
W, b = model.linear.weight, model.linear.bias  # (10, 784) and (10,)
logits = x @ W.T + b  # s_i = x^T w_i + b_i, for the five images at once
print("scores by hand:", tuple(logits.shape), "  equal to model(x):", torch.allclose(logits, model(x), atol=1e-6))""",
    (
        """The **softmax**: exponentiate, then divide by the sum, so the ten numbers are positive and add up to 1.""",
        """**softmax 函数**：先取指数，再除以总和，十个数就都是正数且和为 1。""",
    ),
    """p = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
print("softmax by hand equals torch.softmax:", torch.allclose(p, torch.softmax(logits, dim=1), atol=1e-7))
print("each row sums to 1:", p.sum(dim=1))""",
    (
        """The **cross-entropy** of one image is $-\\log p_y$: small when the model gives the true class a high
probability. The loss of a batch is the mean. `model_step` in `model.py` computes it with `F.cross_entropy`
on the scores:""",
        """一张图像的**交叉熵损失**是 $-\\log p_y$：模型给真实类别的概率越高，损失越小。一批图像的损失取平均。`model.py` 里的
`model_step` 用 `F.cross_entropy` 直接在得分上计算它：""",
    ),
    """by_hand = -torch.log(p[torch.arange(5), y]).mean()
print(f"cross-entropy by hand {by_hand.item():.6f}   F.cross_entropy {F.cross_entropy(logits, y).item():.6f}")
print(inspect.getsource(SoftmaxRegression.model_step))""",
    (
        """### Why the loss takes scores, not probabilities

Computed naively, $e^{s}$ overflows for a large score (float32 ends near $e^{88}$) and the probability becomes
`nan`. `F.cross_entropy` works on the scores with the log-sum-exp form,
$-\\log p_y = -s_y + m + \\log \\sum_j e^{s_j - m}$ with $m = \\max_j s_j$, which never exponentiates anything
above 0:""",
        """### 为什么损失函数接收得分而不是概率

直接计算时，得分很大就会让 $e^{s}$ 溢出（float32 在 $e^{88}$ 附近就到头了），概率变成 `nan`。`F.cross_entropy` 在得分上
用 log-sum-exp 的形式计算：$-\\log p_y = -s_y + m + \\log \\sum_j e^{s_j - m}$，其中 $m = \\max_j s_j$，这样被取指数的数
永远不超过 0：""",
    ),
    """big = torch.tensor([[1000.0, 10.0, -5.0]])  # one image, three classes, a very confident score
target = torch.tensor([1])
naive = torch.exp(big) / torch.exp(big).sum()
print("naive softmax:", naive, "  naive loss:", -torch.log(naive[0, 1]))
m = big.max()
stable = -big[0, 1] + m + torch.log(torch.exp(big - m).sum())
print(f"log-sum-exp by hand: {stable.item():.1f}   F.cross_entropy: {F.cross_entropy(big, target).item():.1f}")""",
    (
        """## 3. The gradient: $\\mathbf{p} - \\text{onehot}(y)$

Backpropagation through softmax and cross-entropy gives a simple gradient for the scores:
$\\partial(-\\log p_y)/\\partial s_i = p_i - [i = y]$. Through $\\mathbf{s} = W\\mathbf{x} + \\mathbf{b}$, the weight
gradient is that vector times $\\mathbf{x}^\\top$. Averaged over the batch, by hand against autograd:""",
        """## 3. 梯度：$\\mathbf{p} - \\text{onehot}(y)$

经过 softmax 和交叉熵的反向传播，得分的梯度非常简单：$\\partial(-\\log p_y)/\\partial s_i = p_i - [i = y]$。再经过
$\\mathbf{s} = W\\mathbf{x} + \\mathbf{b}$，权重的梯度就是这个向量乘以 $\\mathbf{x}^\\top$。对一批取平均，手算和 autograd 对比：""",
    ),
    """model.zero_grad()
F.cross_entropy(model(x), y).backward()  # autograd
with torch.no_grad():
    grad_scores = (torch.softmax(x @ W.T + b, dim=1) - F.one_hot(y, 10).float()) / len(y)
print("dL/dW by hand equals autograd:", torch.allclose(grad_scores.T @ x, W.grad, atol=1e-7))
print("dL/db by hand equals autograd:", torch.allclose(grad_scores.sum(0), b.grad, atol=1e-7))""",
    (
        """## 4. Training with Lightning

What you write is the LightningModule: the step above, the metrics, and the optimiser (`model.py`). Here is
all of `training_step` and `configure_optimizers`:""",
        """## 4. 用 Lightning 训练

你要写的只是 LightningModule：上面的 step、指标和优化器（`model.py`）。下面就是 `training_step` 和
`configure_optimizers` 的全部代码：""",
    ),
    """print(inspect.getsource(SoftmaxRegression.training_step))
print(inspect.getsource(SoftmaxRegression.configure_optimizers))
print("\\n".join(inspect.getsource(SoftmaxRegression.optimizer_config).splitlines()[:12]), "\\n        ...")""",
    (
        """Everything else is Lightning's: the loop over epochs and batches, moving batches to the device (CPU here;
the same code runs on GPUs and several machines), calling backward and the optimiser, the validation loop,
logging to TensorBoard, checkpoints. The recipe is `configs/fashion_mnist.yaml` (SGD with momentum, lr 0.4,
weight decay 0.002, cosine schedule, batch 2,048), for 15 epochs instead of 40 to keep this quick:""",
        """其余都交给 Lightning：按 epoch 和 batch 循环、把数据搬到设备上（这里是 CPU；同一份代码可以在多块 GPU、多台机器上跑）、
调用反向传播和优化器、验证循环、写 TensorBoard 日志、保存 checkpoint。超参数取自 `configs/fashion_mnist.yaml`（带动量的
SGD，学习率 0.4，权重衰减 0.002，余弦学习率调度，batch 2,048），为了快一些这里只训练 15 个 epoch（配置里是 40）：""",
    ),
    """L.seed_everything(42, verbose=False)
model = SoftmaxRegression(lr=0.4, momentum=0.9, weight_decay=0.002, scheduler="cosine")
runs = Path(tempfile.mkdtemp())  # the notebook's logs and checkpoints
trainer = L.Trainer(max_epochs=15, default_root_dir=runs, log_every_n_steps=9, enable_progress_bar=False,
                    enable_model_summary=False)
started = time.perf_counter()
trainer.fit(model, datamodule=dm)
seconds = time.perf_counter() - started
val_acc = trainer.callback_metrics["val/acc"].item()
test_acc = trainer.test(model, datamodule=dm, verbose=False)[0]["test/acc"]
print(f"{trainer.global_step} optimiser steps ({trainer.num_training_batches} per epoch) in {seconds:.1f} s")
print(f"validation accuracy {val_acc:.4f}, test accuracy {test_acc:.4f}")
print("TensorBoard logs in", trainer.logger.log_dir)
print("checkpoint:", trainer.checkpoint_callback.best_model_path)""",
    (
        """## 5. What the model learned

The model standardises each pixel first (`normalize="per_pixel"`: subtract the training mean, divide by the
standard deviation), folded into the layer, so the weights that multiply the raw pixels are
$W / \\sigma$. Each row, drawn as a 28x28 image, is a **template**: a bright pixel where the template is red
raises that class's score, where it is blue lowers it. Some are easy to read: the trouser template has a blue
stripe down the middle (a bright gap between the legs counts against trousers), and the footwear templates put
their weight in the lower half. The speckled borders are pixels that are almost always black: standardisation
divides by their tiny spread, so the few images that light them up move the score a lot:""",
        """## 5. 模型学到了什么

模型会先把每个像素标准化（`normalize="per_pixel"`：减去训练集均值，再除以标准差），这一步被合并进了线性层，所以真正乘在
原始像素上的权重是 $W / \\sigma$。把每一行画成 28x28 的图像，就是一个**模板**：模板为红色的位置如果像素亮，就提高这一类的
得分；为蓝色的位置则降低得分。有些模板一眼就能看懂：裤子的模板中间有一道蓝色竖条（两条腿之间如果是亮的，就不像裤子），
鞋类的模板把权重放在下半部分。边缘那些斑点是几乎总是黑色的像素：标准化要除以它们极小的标准差，所以少数点亮它们的图像会让
得分变化很大：""",
    ),
    """with torch.no_grad():
    templates = (model.linear.weight / model.pixel_std).reshape(10, 28, 28)
fig, axes = plt.subplots(1, 10, figsize=(14, 1.9))
for i, ax in enumerate(axes):
    t = templates[i]
    scale = t.abs().flatten().quantile(0.98).item()  # a few border pixels, almost always black, have huge weights
    ax.imshow(t, cmap="RdBu_r", vmin=-scale, vmax=scale)
    ax.set_title(CLASSES[i], fontsize=10)
    ax.axis("off")
plt.show()""",
    (
        """Where it goes wrong: the confusion matrix on the test set (rows: true class, each row sums to 1). The
upper-body garments (T-shirt, pullover, coat, shirt) are confused with each other; a linear score cannot tell a
collar or a button line apart from the overall shape:""",
        """错在哪里：测试集上的混淆矩阵（行是真实类别，每行和为 1）。上衣类（T 恤、套头衫、外套、衬衫）之间互相混淆：
线性得分很难把领口、纽扣这类细节和整体轮廓区分开：""",
    ),
    """with torch.no_grad():
    probs = torch.softmax(model(images.float().div(255)), dim=1)
predicted = probs.argmax(dim=1)
confusion = torch.zeros(10, 10)
confusion.index_put_((labels, predicted), torch.ones(len(labels)), accumulate=True)
confusion /= confusion.sum(dim=1, keepdim=True)
fig, ax = plt.subplots(figsize=(6.5, 5.5))
ax.imshow(confusion, cmap="Blues")
ax.set_xticks(range(10), CLASSES, rotation=60, ha="right")
ax.set_yticks(range(10), CLASSES)
for i in range(10):
    for j in range(10):
        ax.text(j, i, f"{confusion[i, j]:.2f}", ha="center", va="center", fontsize=7,
                color="white" if confusion[i, j] > 0.5 else "black")
ax.set_xlabel("predicted")
ax.set_ylabel("true")
plt.show()
worst = confusion.diagonal().argmin()
print(f"accuracy {(predicted == labels).float().mean():.4f}; hardest class: {CLASSES[worst]} "
      f"({confusion[worst, worst]:.2f} right)")""",
    (
        """**Calibration**: when the model says 90%, is it right 90% of the time? Group the test images by their top
probability and compare with the accuracy in each group (on the diagonal = calibrated). The expected calibration
error (ECE) is the average gap, weighted by how many images fall in each bin:""",
        """**校准**：模型说有 90% 把握时，它真的有 90% 的时候是对的吗？按最大概率把测试图像分组，比较每组的平均置信度和准确率
（落在对角线上就是校准良好）。期望校准误差（ECE）是各组差距按图像数加权的平均：""",
    ),
    """confidence = probs.max(dim=1).values
correct = (predicted == labels).float()
edges = torch.linspace(0, 1, 11)
bins = torch.bucketize(confidence, edges[1:-1])
centres, accuracy, counts = [], [], []
for k in range(10):
    inside = bins == k
    if inside.any():
        centres.append(confidence[inside].mean().item())
        accuracy.append(correct[inside].mean().item())
        counts.append(inside.sum().item())
ece = sum(n * abs(a - c) for n, a, c in zip(counts, accuracy, centres)) / len(labels)
fig, ax = plt.subplots(figsize=(4.2, 4.2))
ax.plot([0, 1], [0, 1], color="grey", linestyle="--")
ax.plot(centres, accuracy, marker="o")
ax.set_xlabel("confidence (top probability)")
ax.set_ylabel("accuracy")
plt.show()
print(f"expected calibration error: {100 * ece:.1f}%")""",
    (
        """The most confident mistakes (title: true class, then the prediction and its probability). Several are
arguable even for a person:""",
        """最有把握却错了的例子（标题：真实类别，然后是预测和它的概率）。其中有些连人也会犹豫：""",
    ),
    """wrong = (predicted != labels).nonzero().flatten()
wrong = wrong[confidence[wrong].argsort(descending=True)][:8]
fig, axes = plt.subplots(1, 8, figsize=(14, 2.4))
for ax, i in zip(axes, wrong):
    ax.imshow(images[i], cmap="gray")
    ax.set_title(f"{CLASSES[labels[i]]}\\n-> {CLASSES[predicted[i]]} {confidence[i]:.0%}", fontsize=9)
    ax.axis("off")
plt.show()""",
    (
        """## 6. Why it stops near 84.6%

With the weight decay $\\lambda$, training minimises a **convex** function of $(W, \\mathbf{b})$ (in the
standardised pixels $\\mathbf{z}$): $\\frac{1}{N}\\sum_n -\\log p_{y_n}(\\mathbf{z}_n) + \\frac{\\lambda}{2}\\lVert W \\rVert^2$. It has
one minimum, which an exact solver finds: L-BFGS on the whole training split at once. SGD can only approach it
(its objective is a little higher), and no tuning of SGD gets below it. Test accuracy is a noisy reading of the
same place: both land near 84.6%, and a few images more or less on the 10,000 is luck, not a better model:""",
        """## 6. 为什么停在 84.6% 附近

加上权重衰减 $\\lambda$ 后，训练要最小化的是 $(W, \\mathbf{b})$ 的一个**凸**函数（在标准化后的像素 $\\mathbf{z}$ 上）：
$\\frac{1}{N}\\sum_n -\\log p_{y_n}(\\mathbf{z}_n) + \\frac{\\lambda}{2}\\lVert W \\rVert^2$。它只有一个最小值，精确的求解器能找到它：在整个训练集上一次性
运行 L-BFGS。SGD 只能逼近它（目标函数值略高一点），怎么调 SGD 也不会低于它。测试准确率是对同一个位置的一次带噪声的
读数：两者都在 84.6% 附近，在 10,000 张图像上多对或少对几张只是运气，而不是模型更好：""",
    ),
    """def standardised(split):
    return (split.images.float().div(255).reshape(len(split.labels), -1) - model.pixel_mean) / model.pixel_std

z, target = standardised(dm.train_set), dm.train_set.labels
exact = torch.nn.Linear(784, 10)
lbfgs = torch.optim.LBFGS(exact.parameters(), max_iter=500, tolerance_grad=1e-6, line_search_fn="strong_wolfe")

def objective():
    lbfgs.zero_grad()
    loss = F.cross_entropy(exact(z), target) + 0.002 / 2 * exact.weight.pow(2).sum()
    loss.backward()
    return loss

started = time.perf_counter()
lbfgs.step(objective)
with torch.no_grad():
    # The trained model's own weights act on the same standardised pixels (its forward folds the division in).
    sgd_value = F.cross_entropy(model.linear(z), target) + 0.002 / 2 * model.linear.weight.pow(2).sum()
    exact_value = F.cross_entropy(exact(z), target) + 0.002 / 2 * exact.weight.pow(2).sum()
    optimum_acc = (exact(standardised(dm.test_set)).argmax(1) == dm.test_set.labels).float().mean().item()
print(f"exact optimum (L-BFGS, {time.perf_counter() - started:.0f} s): objective {exact_value:.5f}, "
      f"test accuracy {optimum_acc:.4f}")
print(f"SGD, the 15 epochs above:            objective {sgd_value:.5f}, test accuracy {test_acc:.4f}")""",
    (
        """To go past it the model has to stop being linear in the pixels: a **hidden layer** with a nonlinearity
(a multilayer perceptron) reaches about 88-89% on Fashion-MNIST, and a small convolutional network above 90%.
That is the next chapter of d2l, *Multilayer Perceptrons*: https://d2l.ai/chapter_multilayer-perceptrons/mlp.html.
In this project the model class is chosen by config (`model.class_path`), so such a model is a new
LightningModule next to `SoftmaxRegression`, with the same DataModule, CLI and configs.""",
        """想超过它，模型就不能再对像素是线性的：加一个带非线性激活的**隐藏层**（多层感知机）在 Fashion-MNIST 上能到 88-89% 左右，
小型卷积网络能超过 90%。这正是《动手学深度学习》的下一章“多层感知机”：https://zh.d2l.ai/chapter_multilayer-perceptrons/mlp.html 。
在本项目里，模型类由配置选择（`model.class_path`），所以这样的模型就是和 `SoftmaxRegression` 并列的一个新 LightningModule，
数据模块、命令行和配置都可以沿用。""",
    ),
    (
        """## 7. From the notebook to the command line

The same classes run from a YAML config with LightningCLI: `python -m lit_softmax fit --config
configs/fashion_mnist.yaml` trains the full 40-epoch recipe and tests the best checkpoint; `tensorboard --logdir
logs` shows the curves, the weight templates, the confusion matrix and calibration for every run. Here for two
epochs, in a temporary folder:""",
        """## 7. 从 notebook 到命令行

同样的类也可以由 LightningCLI 从 YAML 配置运行：`python -m lit_softmax fit --config configs/fashion_mnist.yaml`
按完整的 40 个 epoch 训练，并在最好的 checkpoint 上测试；`tensorboard --logdir logs` 可以查看每次运行的曲线、权重模板、
混淆矩阵和校准情况。这里只跑两个 epoch，输出放在临时目录里：""",
    ),
    """command = [sys.executable, "-m", "lit_softmax", "fit", "--config", "configs/fashion_mnist.yaml",
           "--trainer.max_epochs", "2", "--trainer.logger.save_dir", str(runs / "cli"),
           "--trainer.enable_progress_bar", "false"]
done = subprocess.run(command, cwd="..", capture_output=True, text=True)
print("$ python -m lit_softmax fit --config configs/fashion_mnist.yaml --trainer.max_epochs 2 ...")
print("\\n".join(line for line in done.stdout.splitlines() if "test/" in line))
print("exit code", done.returncode, "| run folder:", next((runs / "cli").glob("*/version_*")))""",
    (
        """What to read next: `lit_softmax/model.py`, `lit_softmax/data.py` and `lit_softmax/cli.py`, in that order
(the README's reading order). Each formula above is a line there: `forward` is $W\\mathbf{x} + \\mathbf{b}$,
`model_step` is the cross-entropy on the scores, `predict_step` is the softmax, and Lightning does the rest.""",
        """接下来读什么：按 README 里的顺序读 `lit_softmax/model.py`、`lit_softmax/data.py` 和 `lit_softmax/cli.py`。上面每个
公式在那里都对应一行代码：`forward` 是 $W\\mathbf{x} + \\mathbf{b}$，`model_step` 是在得分上计算交叉熵，`predict_step` 是
softmax，其余交给 Lightning。""",
    ),
]


def notebook(language: int) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for cell in CELLS:
        if isinstance(cell, tuple):
            nb.cells.append(nbformat.v4.new_markdown_cell(cell[language]))
        else:
            nb.cells.append(nbformat.v4.new_code_cell(cell))
    return nb


def main() -> None:
    for language, name in enumerate(["softmax_regression.ipynb", "softmax_regression.zh-CN.ipynb"]):
        nb = notebook(language)
        started = __import__("time").perf_counter()
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
        for i, cell in enumerate(nb.cells):  # stable ids: a rebuild changes only what changed
            cell["id"] = f"cell-{i:02d}"
        nbformat.write(nb, HERE / name)
        print(f"wrote and ran {name} in {__import__('time').perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
