"""Errors a user can fix. The CLI prints their message alone (no traceback) and exits non-zero."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys


class LitSoftmaxError(Exception):
    """Base class: the message says what was wrong and how to fix it."""

    prefix = "error: "  # printed before the message
    exit_code = 2


class ConfigError(LitSoftmaxError, ValueError):
    """A config value is out of range or inconsistent."""


class DataError(LitSoftmaxError, RuntimeError):
    """The dataset is missing, unreadable or not the real Fashion-MNIST."""


class CheckpointError(LitSoftmaxError, RuntimeError):
    """A checkpoint is missing, unreadable or from another model."""


class OutputError(LitSoftmaxError, OSError):
    """A run's files cannot be written (read-only directory, full disk); what was written before is intact."""


# Optional packages -> the pyproject.toml extra that installs them.
EXTRAS = {"onnxruntime": "onnx", "onnxscript": "onnx", "onnx": "onnx", "optuna_integration": "sweep",
          "optuna": "sweep", "mlflow": "mlflow", "wandb": "wandb", "litserve": "serve"}  # fmt: skip


def missing_extra(error: ImportError) -> str | None:
    """The extra that would install the module `error` is about, if it is one of ours."""
    text = f"{error.name or ''} {error}"
    return next((extra for module, extra in EXTRAS.items() if re.search(rf"\b{module}\b", text)), None)


@contextlib.contextmanager
def exit_on_user_error():
    """An error a user can fix is printed as one line, `lit_softmax: error: <message>`, and ends the process with
    its exit code (2 unless it says otherwise): a LitSoftmaxError (also one jsonargparse wrapped while instantiating
    a class), Lightning's MisconfigurationException, a missing optional package (naming the extra to install).
    `LIT_SOFTMAX_TRACEBACK=1` shows the traceback instead."""
    try:
        yield
    except BaseException as e:
        # Imported here: a process that only imports lit_softmax (the model server's workers) stays torch-free.
        from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

        if isinstance(e, SIGTERMException):  # Lightning's own handler, in the moment before ours took over
            sys.exit(128 + signal.SIGTERM)  # (a checkpoint is saved)
        if not isinstance(e, Exception) or os.environ.get("LIT_SOFTMAX_TRACEBACK"):
            raise
        chain = []
        while e is not None and e not in chain:  # jsonargparse re-raises an error from __init__ with its cause
            chain.append(e)
            e = e.__cause__ or e.__context__
        ours = next((c for c in chain if isinstance(c, LitSoftmaxError)), None)
        if ours is not None:
            print(f"lit_softmax: {ours.prefix}{ours}", file=sys.stderr)
            sys.exit(ours.exit_code)
        missing = next((c for c in chain if isinstance(c, ImportError) and missing_extra(c)), None)
        if missing is not None:
            extra = missing_extra(missing)
            print(
                f"lit_softmax: error: {missing}. This needs the `{extra}` extra: `pip install 'lit_softmax[{extra}]'` "
                f"(in a checkout of the project: `pip install -e '.[{extra}]'`).",
                file=sys.stderr,
            )
            sys.exit(2)
        lightning = next((c for c in chain if isinstance(c, MisconfigurationException)), None)
        if lightning is not None:  # Lightning's word for a combination of settings it cannot run
            print(f"lit_softmax: error: {lightning}", file=sys.stderr)
            sys.exit(2)
        raise
