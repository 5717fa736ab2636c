"""Errors a user can fix. The CLI prints their message alone (no traceback) and exits non-zero."""


class LitSoftmaxError(Exception):
    """Base class: the message says what was wrong and how to fix it."""


class ConfigError(LitSoftmaxError, ValueError):
    """A config value is out of range or inconsistent."""


class DataError(LitSoftmaxError, RuntimeError):
    """The dataset is missing, unreadable or not the real Fashion-MNIST."""


class CheckpointError(LitSoftmaxError, RuntimeError):
    """A checkpoint is missing, unreadable or from another model."""


class OutputError(LitSoftmaxError, OSError):
    """A run's files cannot be written (read-only directory, full disk); what was written before is intact."""
