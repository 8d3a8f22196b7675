"""The project's own user-error types: a bad config, data, run folder or checkpoint.

`ode_nets.cli` turns exactly these into one line on stderr and exit code 2; every other exception is a
bug and keeps its traceback. Each subclasses `ValueError` too, so callers that catch `ValueError` still work.
"""

from __future__ import annotations


class UserError(ValueError):
    """Something the user can fix (config, data, run folder, checkpoint); the message says what."""


class ConfigError(UserError):
    """A config file, override or constructor argument is invalid; the message names the key and the source."""


class DataError(UserError):
    """Data missing, malformed or inconsistent; the message says what to fix."""


class CheckpointError(UserError):
    """A checkpoint is missing, truncated or does not match the model."""


class RunDirError(UserError):
    """The run folder exists (and neither overwrite nor resume was asked) or cannot be resumed."""


class TrainingError(RuntimeError):
    """Training stopped: non-finite loss or gradient, or a solver failure. The message names the step."""


class StorageError(TrainingError):
    """Writing to the run folder failed (disk full, I/O error, no permission). The message names the path;
    what was written before (the previous checkpoint) is intact."""
