"""Errors a user can fix. The CLI prints their message alone (no traceback) and exits non-zero."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException


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


@contextlib.contextmanager
def exit_on_user_error():
    """A LitSoftmaxError (also one that jsonargparse wrapped while instantiating a class) is printed as one line,
    `lit_softmax: error: <message>`, and ends the process with its exit code (2 unless it says otherwise).
    `LIT_SOFTMAX_TRACEBACK=1` shows the traceback instead."""
    try:
        yield
    except SIGTERMException:  # Lightning's own handler, in the moment before ours took over: a checkpoint is saved
        sys.exit(128 + signal.SIGTERM)
    except MisconfigurationException as e:  # Lightning's word for a combination of settings it cannot run
        if os.environ.get("LIT_SOFTMAX_TRACEBACK"):
            raise
        print(f"lit_softmax: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        error = e
        while error is not None and not isinstance(error, LitSoftmaxError):
            error = error.__cause__  # jsonargparse re-raises an error from __init__ as a ValueError, cause kept
        if error is None or os.environ.get("LIT_SOFTMAX_TRACEBACK"):
            raise
        print(f"lit_softmax: {error.prefix}{error}", file=sys.stderr)
        sys.exit(error.exit_code)
