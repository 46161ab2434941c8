"""User-facing errors: one line that says what is wrong and how to fix it.

The CLI catches `MinivaeError` and prints its message without a traceback; anything
else is a bug and keeps its traceback.
"""


class MinivaeError(Exception):
    """A user mistake or bad input (option, file, checkpoint): message is one line."""


class DataError(MinivaeError):
    """A dataset file is missing, truncated or corrupt."""


class CheckpointError(MinivaeError):
    """A checkpoint or results file is missing, corrupt or does not match the request."""


class SpecError(MinivaeError):
    """Weights and spec given to `minivae import` (or a model to export) that do not fit together
    or that minivae's layers cannot hold; the message names the tensor or spec key."""
