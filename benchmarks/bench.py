"""Side-by-side benchmark: the original script, bare PyTorch loops, and lit_softmax's recipes.

    python benchmarks/bench.py                  # 3 repeats, ~6 minutes on a 2-core CPU
    python benchmarks/bench.py --repeats 1      # quick look
    python benchmarks/bench.py --gpu            # lit_softmax and the bare loops on one CUDA GPU

Pipelines run in alternating order (machine drift hits all alike), each as a whole process, as a user runs it:
- per-epoch time: the median epoch of the run, timed inside the process (lit_softmax: the callback
  benchmarks/epoch_timer.py, epoch start to epoch start, so validation, checkpoints and logging count; the bare
  loops: their own timer), first epoch left out. The original script prints no per-epoch time, so for it the
  epoch is the difference of a 1-epoch and a full run. Medians over repeats are reported;
- whole process: wall time of the full run, imports, data loading and the final test included;
- peak RSS of that process alone (wait4), and test accuracy.
Writes benchmarks/out/results.md and results.png.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
TEXTBOOK = [
    "--model.class_path",
    "lit_softmax.SoftmaxRegression",
    "--data.class_path",
    "lit_softmax.FashionMNISTDataModule",
]


# Host reads of tensor values per optimizer step (each a device sync on a GPU): tests/probes.py's counter.
COUNT_HOST_READS = ["--trainer.callbacks+=probes.CountHostReads", "--trainer.callbacks.report", "true"]


def pipelines(data_dir: Path, gpu: bool) -> dict[str, tuple[list[str], int]]:
    """name -> (command, epochs)."""
    py = sys.executable
    # Arguments after the recipe's --config: its `callbacks:` list replaces callbacks added before it.
    after = ["--data.data_dir", str(data_dir)]
    if gpu:  # one GPU, dataset resident in device memory
        after += ["--trainer.accelerator", "gpu", "--trainer.devices", "1", "--data.on_device", "true"]
    after += ["--trainer.logger.init_args.save_dir", str(OUT / "logs"),
              "--trainer.callbacks+=benchmarks.epoch_timer.EpochTimer"]  # fmt: skip

    def lit(config: str, *args: str) -> list[str]:
        return [py, "-m", "lit_softmax", "fit", "--config", config, *args, *after]

    bare = [py, str(REPO / "benchmarks/bare_loop.py"), "--data-dir", str(data_dir), *(["--device", "cuda"] * gpu)]
    seed, default = str(REPO / "configs/seed_recipe.yaml"), str(REPO / "configs/fashion_mnist.yaml")
    mixed = {  # the GPU rows: bf16 (Ampere+) and fp16 with a GradScaler (which reads its overflow flag)
        "lit fashion_mnist bf16-mixed": (lit(default, "--trainer.precision", "bf16-mixed"), 40),
        "lit fashion_mnist 16-mixed": (lit(default, "--trainer.precision", "16-mixed"), 40),
    }
    return {
        **(mixed if gpu else {}),
        "original script": ([py, str(REPO / "benchmarks/seed_script.py"), "--data-dir", str(data_dir)], 10),
        "bare loop, seed recipe": ([*bare, "--recipe", "seed"], 10),
        "lit seed_recipe (grouped steps)": (lit(seed), 10),
        # The same recipe with the textbook classes, one SGD step per training_step call: what grouping saves.
        "lit seed_recipe, 1 step/call": (lit(seed, *TEXTBOOK, "--trainer.log_every_n_steps", "50"), 10),
        "bare loop, default recipe": ([*bare, "--recipe", "default"], 40),
        "lit fashion_mnist": (lit(default), 40),
    }


def run(command: list[str]) -> tuple[float, float, float, float, dict[str, float]]:
    """(wall seconds, peak RSS in GB, test accuracy, median epoch seconds or nan, other measurements) of one
    process."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"})  # fmt: skip
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{output[-3000:]}")
    acc = re.search(r"test_acc=([0-9.]+)", output) or re.search(r"test/acc\s+([0-9.]+)", output)
    epoch = re.search(r"epoch_median=([0-9.]+)", output)
    extra = {k: float(v) for k, v in re.findall(r"(steps_per_s|checkpoint_writes_per_epoch|gpu_peak_mb|"
                                                r"host_reads_per_step)=([0-9.na]+)", output)}  # fmt: skip
    return (wall, usage.ru_maxrss / 1024**2, float(acc.group(1)) if acc else float("nan"),
            float(epoch.group(1)) if epoch else float("nan"), extra)  # fmt: skip


def data_prep_times(source: Path) -> tuple[float, float]:
    code = (
        "import time, sys; t = time.perf_counter(); from lit_softmax.data import FashionMNISTDataModule as D; "
        "t = time.perf_counter(); d = D(data_dir=sys.argv[1], download=False); d.prepare_data(); d.setup('fit'); "
        "d.setup('test'); print(time.perf_counter() - t)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for gz in source.glob("*.gz"):
            shutil.copy(gz, tmp)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        command = [sys.executable, "-c", code, tmp]
        times = [float(subprocess.check_output(command, cwd=REPO, text=True, env=env)) for _ in range(2)]
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=str(REPO / "data"), help="gets the decompressed files (made once)")
    parser.add_argument("--gpu", action="store_true", help="run lit_softmax and the bare loops on one CUDA GPU")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these pipelines (names as in the table)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from lit_softmax.fashion_mnist import SYSTEM_DIR, cache_dir, locate_raw_files

    data_dir = Path(args.data_dir)
    # The original script reads torchvision's layout, data_dir/FashionMNIST/raw: links to the verified copies.
    cache_dir(data_dir).mkdir(parents=True, exist_ok=True)
    for path in locate_raw_files(data_dir).values():
        link = cache_dir(data_dir) / path.name
        if not link.exists():
            link.symlink_to(path.resolve())
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(OUT / "logs", ignore_errors=True)
    cold, warm = data_prep_times(
        SYSTEM_DIR if (SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file() else cache_dir(data_dir)
    )

    todo = pipelines(data_dir, args.gpu)
    if args.only:
        unknown = set(args.only) - set(todo)
        if unknown:
            raise SystemExit(f"unknown pipeline(s) {sorted(unknown)}; choose from {list(todo)}")
        todo = {name: todo[name] for name in args.only}
    results: dict[str, list[tuple]] = {name: [] for name in todo}
    extras: dict[str, dict[str, float]] = {}
    for r in range(args.repeats):
        for name, (command, epochs) in todo.items():
            wall, rss, acc, epoch, extras[name] = run([*command, *epoch_args(command, epochs)])
            if epoch != epoch:  # nan: no timer inside (the original script): difference of two runs
                epoch = (wall - run([*command, *epoch_args(command, 1)])[0]) / (epochs - 1)
            results[name].append((epoch, wall, rss, acc))
            print(f"[{r + 1}/{args.repeats}] {name:32s} epoch {epoch:6.3f} s  wall {wall:6.1f} s  "
                  f"rss {rss:4.2f} GB  acc {acc:.4f}", flush=True)  # fmt: skip

    for name, (command, _) in todo.items():  # counted apart: the counter's TorchFunctionMode slows what it watches
        if "lit_softmax" in command:
            counted = run([*command, *COUNT_HOST_READS, *epoch_args(command, 3)])[4]
            extras[name]["host_reads_per_step"] = counted.get("host_reads_per_step", float("nan"))

    med = {name: [statistics.median(column) for column in zip(*rows)] for name, rows in results.items()}
    import torch

    lines = [
        f"Benchmark: {args.repeats} repeat(s), medians; {os.cpu_count()} CPUs; torch {torch.__version__}"
        + (f"; {torch.cuda.get_device_name()}" if args.gpu else ""),
        "",
        "| pipeline | s/epoch | whole process (s) | peak RSS (GB) | test acc | epochs |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, (epoch, wall, rss, acc) in med.items():
        lines.append(f"| {name} | {epoch:.3f} | {wall:.1f} | {rss:.2f} | {acc:.4f} | {todo[name][1]} |")
    lines += ["", "| pipeline | optimizer steps/s | host reads/step | checkpoint writes/epoch | peak GPU MB |",
              "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, extra in extras.items():
        if extra:  # lit_softmax's runs (the last repeat)
            cells = [extra.get(k, float("nan")) for k in ("steps_per_s", "host_reads_per_step",
                                                          "checkpoint_writes_per_epoch", "gpu_peak_mb")]  # fmt: skip
            lines.append(f"| {name} | {cells[0]:.0f} | {cells[1]:.3f} | {cells[2]:.2f} | {cells[3]:.0f} |")
    write_ms = checkpoint_write_ms()
    if write_ms is not None:
        lines.append(f"\n- one checkpoint write (serialize + fsync + rename, AtomicCheckpointIO): {write_ms:.2f} ms "
                     "(median of 20)")  # fmt: skip
    lines.append("")
    for name, base, what in (
        ("lit fashion_mnist", "bare loop, default recipe", "framework cost at the default recipe, per epoch"),
        ("lit seed_recipe (grouped steps)", "bare loop, seed recipe", "at the original recipe, grouped steps"),
        ("lit seed_recipe, 1 step/call", "bare loop, seed recipe", "at the original recipe, one step per call"),
    ):
        if name in med and base in med:
            lines.append(f"- {what}, {name} / {base}: **{paired(results, name, base, 0):.2f}x**")
    if "lit fashion_mnist" in med and "original script" in med:
        whole = paired(results, "lit fashion_mnist", "original script", 1)
        lines.append(f"- whole default `fit`, lit fashion_mnist / original script: **{whole:.2f}x**")
    lines.append("- ratios: median over repeats of each repeat's ratio (runs next to each other: drift cancels)")
    lines.append(
        f"- data preparation: cold (decompress + parse + verify) {cold:.2f} s, warm (parse + verify) {warm:.2f} s"
    )
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    (OUT / "results.md").write_text(report)
    plot(med)


def checkpoint_write_ms() -> float | None:
    """Median time of writing the default run's last.ckpt with AtomicCheckpointIO."""
    import torch

    from lit_softmax.checkpoints import AtomicCheckpointIO

    last = next(iter(sorted((OUT / "logs").glob("*/version_*/checkpoints/last.ckpt"))), None)
    if last is None:
        return None
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    io, times = AtomicCheckpointIO(), []
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        for _ in range(20):
            start = time.perf_counter()
            io.save_checkpoint(checkpoint, Path(tmp) / "last.ckpt")
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def paired(results: dict, name: str, base: str, column: int) -> float:
    return statistics.median(a[column] / b[column] for a, b in zip(results[name], results[base]))


def epoch_args(command: list[str], epochs: int) -> list[str]:
    return ["--trainer.max_epochs", str(epochs)] if "lit_softmax" in command else ["--epochs", str(epochs)]


def plot(med: dict[str, list[float]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"wrote {OUT / 'results.md'} (install matplotlib for the plot)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    names = list(med)
    axes[0].barh(names, [med[n][0] for n in names], color="tab:blue")
    axes[0].set_xlabel("seconds per training epoch (median)")
    axes[1].barh(names, [med[n][1] for n in names], color="tab:orange")
    axes[1].set_xlabel("whole process, seconds")
    axes[1].set_yticks([])
    for ax in axes:
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(OUT / "results.png", dpi=100)
    print(f"wrote {OUT / 'results.md'} and {OUT / 'results.png'}")


if __name__ == "__main__":
    main()
