"""Files that hold a run's work: atomic writes, checkpoints (atomic save, safe load, shape check).

Everything that writes goes through `atomic_write_bytes`: a crash or a concurrent process never sees half a
file. Everything that reads a checkpoint goes through `load_checkpoint_safely`: tensors and plain data only.
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_softmax.errors import CheckpointError, OutputError


def atomic_write_bytes(data: bytes, dest: Path) -> None:
    """Write next to `dest`, fsync, and rename: a crash or a concurrent process never sees half a file.

    A failed write (full disk, read-only directory) removes its temporary file, leaves any earlier `dest` as it
    was, and raises OutputError saying so.
    """
    try:
        _atomic_write(data, dest)
    except OSError as e:
        earlier = f"the earlier {dest.name} is intact" if dest.exists() else f"no {dest.name} was written"
        hint = "free some space" if e.errno == errno.ENOSPC else "make it writable"
        resume = " (an interrupted `fit` resumes with `--ckpt_path last`)" if dest.suffix == ".ckpt" else ""
        raise OutputError(
            f"cannot write {dest} ({e.strerror or e}): {earlier}, and every other file is as it was. "
            f"{hint.capitalize()} (or write somewhere else), then run the command again{resume}."
        ) from e


def _atomic_write(data: bytes, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file in the same directory, then rename over the target.

    A process killed mid-write (SIGKILL, power loss) leaves the previous checkpoint intact plus at most a
    stray `.tmp` file; it never leaves a truncated `last.ckpt` or best checkpoint.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # ~40 KB here; serialising first keeps the file write a single step
        atomic_write_bytes(buffer.getvalue(), Path(path))


def load_checkpoint_safely(path: Path) -> dict:
    """Load with `weights_only=True` (tensors and plain containers only: a crafted pickle cannot run code),
    and turn every failure into a message that says what is wrong with the file."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if "Weights only load failed" in str(e):
            raise CheckpointError(
                f"refusing to load {path}: it contains Python objects other than tensors and plain data, which "
                "could run arbitrary code when unpickled (loaded with weights_only=True). Only use checkpoints "
                "written by this project, from a source you trust."
            ) from e
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint ({type(e).__name__}: {str(e)[:120]}); it is truncated or not "
            "a .ckpt file. Use another checkpoint of the run (e.g. last.ckpt) or retrain."
        ) from e
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict'); pass a .ckpt from `fit`.")
    state = checkpoint["state_dict"]
    broken = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not v.isfinite().all()]
    if broken:
        raise CheckpointError(
            f"refusing {path}: {', '.join(broken)} holds NaN or infinite values (the run had diverged when it was "
            "saved), so every prediction would be meaningless. Use an earlier checkpoint of the run (e.g. "
            "`--ckpt_path best`), or retrain with a lower `--model.lr`."
        )
    return checkpoint


def check_fits_model(checkpoint: dict, path: Path, model: torch.nn.Module) -> None:
    """Every tensor the model has is in the checkpoint, with the same shape."""
    state = checkpoint["state_dict"]
    for name, expected in model.state_dict().items():
        found = state.get(name)
        if found is None or found.shape != expected.shape:
            got = "missing" if found is None else f"shape {tuple(found.shape)}"
            raise CheckpointError(
                f"{path} does not fit this model: {name} is {got}, expected shape {tuple(expected.shape)}. "
                "Run with the config the checkpoint was trained with (its run directory holds config.yaml)."
            )
