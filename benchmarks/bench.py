"""Side-by-side benchmark: the original script, a bare PyTorch loop, and lit_softmax's two recipes.

    python benchmarks/bench.py                  # 3 repeats, ~5 minutes on a 2-core CPU
    python benchmarks/bench.py --repeats 1      # quick look

For each pipeline, in alternating order (so machine drift hits all alike), it runs the whole process twice, at
a short and the full epoch count: per-epoch time = (wall_full - wall_short) / (epochs_full - epochs_short),
so start-up, data loading and testing cancel. Reports medians over repeats, plus whole-process wall time, peak
RSS (of that process alone, from wait4) and test accuracy of the full run. Also times data preparation
(cold: decompress + parse + verify; warm: parse + verify). Writes benchmarks/out/results.md and results.png.
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
TRAIN = {
    "original script": 60000,
    "bare loop": 60000,
    "lit seed_recipe": 55000,
    "lit seed_recipe, 1 step/call": 55000,
    "lit fashion_mnist": 55000,
}


def pipelines(data_dir: Path, gpu: bool) -> dict[str, tuple[list[str], int, int]]:
    """name -> (command without epochs, short epochs, full epochs)."""
    py = sys.executable
    lit = [py, "-m", "lit_softmax", "fit", "--data.data_dir", str(data_dir)]
    if gpu:  # one GPU, dataset resident in device memory (see README "GPUs, on paper")
        lit += ["--trainer.accelerator", "gpu", "--trainer.devices", "1", "--data.on_device", "true"]
    lit += ["--trainer.logger.init_args.save_dir"]
    one_step = ["--data.steps_per_execution", "1", "--trainer.log_every_n_steps", "50"]
    seed = ["--config", str(REPO / "configs/seed_recipe.yaml")]
    return {
        "original script": (
            [py, str(REPO / "benchmarks/seed_script.py"), "--data-dir", str(data_dir), "--epochs"],
            1,
            10,
        ),
        "bare loop": ([py, str(REPO / "benchmarks/bare_loop.py"), "--data-dir", str(data_dir), "--epochs"], 1, 10),
        "lit seed_recipe": (
            [*lit, str(OUT / "logs"), "--config", str(REPO / "configs/seed_recipe.yaml"), "--trainer.max_epochs"],
            1,
            10,
        ),
        # The same run with one SGD step per training_step call (Lightning's usual shape): what grouping saves.
        "lit seed_recipe, 1 step/call": (
            [*lit, str(OUT / "logs"), *seed, *one_step, "--trainer.max_epochs"],
            1,
            10,
        ),
        "lit fashion_mnist": (
            [*lit, str(OUT / "logs"), "--config", str(REPO / "configs/fashion_mnist.yaml"), "--trainer.max_epochs"],
            4,
            40,
        ),
    }


def run(command: list[str]) -> tuple[float, float, float]:
    """(wall seconds, peak RSS in GB, test accuracy) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{output[-3000:]}")
    match = re.search(r"test_acc=([0-9.]+)", output) or re.search(r"test/acc\s+([0-9.]+)", output)
    return wall, usage.ru_maxrss / 1024**2, float(match.group(1)) if match else float("nan")


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
    parser.add_argument("--gpu", action="store_true", help="run the lit_softmax pipelines on one CUDA GPU")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from lit_softmax.data import SYSTEM_DIR, cache_dir, locate_raw_files

    data_dir = Path(args.data_dir)
    locate_raw_files(data_dir)  # torchvision's layout, which the original script reads
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(OUT / "logs", ignore_errors=True)
    cold, warm = data_prep_times(
        SYSTEM_DIR if (SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file() else cache_dir(data_dir)
    )

    results: dict[str, list[tuple]] = {name: [] for name in TRAIN}
    todo = pipelines(data_dir, args.gpu)
    for r in range(args.repeats):
        for name, (command, short, full) in todo.items():
            wall_short, _, _ = run([*command, str(short)])
            wall_full, rss, acc = run([*command, str(full)])
            per_epoch = (wall_full - wall_short) / (full - short)
            results[name].append((per_epoch, wall_full, rss, acc))
            print(f"[{r + 1}/{args.repeats}] {name:18s} epoch {per_epoch:6.3f} s  wall {wall_full:6.1f} s  "
                  f"rss {rss:4.2f} GB  acc {acc:.4f}", flush=True)  # fmt: skip

    med = {name: [statistics.median(column) for column in zip(*rows)] for name, rows in results.items()}
    lines = [
        f"Benchmark: {args.repeats} repeat(s), medians; {os.cpu_count()} CPUs; torch {__import__('torch').__version__}",
        "",
        "| pipeline | s/epoch | samples/s | whole process (s) | peak RSS (GB) | test acc | epochs |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, (per_epoch, wall, rss, acc) in med.items():
        lines.append(f"| {name} | {per_epoch:.3f} | {TRAIN[name] / per_epoch:,.0f} | {wall:.1f} | {rss:.2f} | "
                     f"{acc:.4f} | {todo[name][2]} |")  # fmt: skip
    tax = med["lit seed_recipe"][0] / med["bare loop"][0]
    tax_one = med["lit seed_recipe, 1 step/call"][0] / med["bare loop"][0]
    speed = med["lit fashion_mnist"][1] / med["original script"][1]
    lines += [
        "",
        f"- framework tax at the original recipe, per epoch, lit seed_recipe / bare loop: **{tax:.2f}x** "
        f"({tax_one:.2f}x with one SGD step per training_step call)",
        f"- time to accuracy, whole process, lit fashion_mnist / original script: **{speed:.2f}x**",
        f"- data preparation: cold (decompress + parse + verify) {cold:.2f} s, warm (parse + verify) {warm:.2f} s",
    ]
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    (OUT / "results.md").write_text(report)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        names = list(med)
        axes[0].barh(names, [med[n][0] for n in names], color="tab:blue")
        axes[0].set_xlabel("seconds per training epoch")
        axes[1].barh(names, [med[n][1] for n in names], color="tab:orange")
        axes[1].set_xlabel("whole process, seconds")
        for ax in axes:
            ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(OUT / "results.png", dpi=100)
        print(f"wrote {OUT / 'results.md'} and {OUT / 'results.png'}")
    except ImportError:
        print(f"wrote {OUT / 'results.md'} (install matplotlib for the plot)")


if __name__ == "__main__":
    main()
