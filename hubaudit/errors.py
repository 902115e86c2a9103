"""Every error a user can cause, in one place.

Each one is a :class:`HubauditError` whose message says what to do; the CLI prints it on one line and
exits with code 2. Each also inherits the matching built-in, so ``except FileNotFoundError`` works too.
"""

from __future__ import annotations


class HubauditError(Exception):
    """Base class of the errors a user can cause (bad input, missing extra, impossible request)."""

    exit_code = 2


class SpecError(HubauditError, ValueError):
    """Raised when an attack spec string (``rtn:4:g128``, ``prune:0.2``) is malformed or names no attack."""


class ForgetSetError(HubauditError, ValueError):
    """Raised when a forget set cannot be read: unknown source, bad file, missing field, empty part."""


class ForgetSetNotFound(ForgetSetError, FileNotFoundError):
    """Raised when a forget-set path or name does not exist."""


class ModelLoadError(HubauditError, OSError):
    """Raised when a model folder cannot be loaded as a causal language model."""


class ModelNotFound(ModelLoadError, FileNotFoundError):
    """Raised when a model path does not exist."""


class ModelRefError(HubauditError, ValueError):
    """Raised when a MODEL argument could be a Hub id or a local folder (write ``./name`` for a folder)."""


class OutputDirError(HubauditError, OSError):
    """Raised when the output folder cannot be used (it is a file, or not writable)."""


class MetricError(HubauditError, ValueError):
    """Raised when a metric name is unknown or its settings are invalid."""


class HubError(HubauditError, OSError):
    """Raised when the Hub refuses or cannot serve a request (gated, private, offline with an empty cache)."""


class HubNotFound(HubError, FileNotFoundError):
    """Raised when a Hub repository, revision or file does not exist."""


class InsufficientMemory(HubauditError, MemoryError):
    """Raised before loading when the model and one quantized copy cannot fit in the memory available."""


class CardError(HubauditError, ValueError):
    """Raised when a model card cannot be updated (unreadable metadata, a report that does not match)."""


class StoreError(HubauditError, OSError):
    """Raised when the results store cannot be opened, read or written (not a SQLite file, corrupted,
    locked, no room): the message names the file and the way out (another ``--store``, or ``--no-store``)."""
