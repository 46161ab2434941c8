"""User-facing errors: one line that says what is wrong and how to fix it.

The CLI catches `MinivaeError` and prints its message without a traceback; anything
else is a bug and keeps its traceback.
"""
import signal
import sys


class MinivaeError(Exception):
    """A user mistake or bad input (option, file, checkpoint): message is one line."""


class DataError(MinivaeError):
    """A dataset file is missing, truncated or corrupt."""


class CheckpointError(MinivaeError):
    """A checkpoint or results file is missing, corrupt or does not match the request."""


class SpecError(MinivaeError):
    """Weights and spec given to `minivae import` (or a model to export) that do not fit together
    or that minivae's layers cannot hold; the message names the tensor or spec key."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every `finally` runs and finished blocks stay saved."""


_pending = []       # signals whose exception may have been swallowed (see on_signal)


def on_signal(signum, frame):
    """Handler for SIGINT and SIGTERM: raise at once, and remember the signal. Python drops an
    exception raised while a weakref callback or __del__ runs (it prints "Exception ignored"),
    which once let a Ctrl-C be swallowed; check_interrupt() raises it again at the next safe point."""
    _pending.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def quiet_dropped_interrupts(unraisable, default=sys.__unraisablehook__):
    """sys.unraisablehook while on_signal is installed: the interrupt that on_signal raised inside a
    weakref callback or __del__ is not printed (as "Exception ignored ... Traceback"): it is
    pending, and check_interrupt() raises it at the next safe point. Anything else: `default`
    (the CLI passes the hook it replaced)."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _pending:
        return
    default(unraisable)


def check_interrupt():
    """Raise a signal that on_signal saw but whose exception was lost (called by the progress
    updates and the stage engine between blocks)."""
    if _pending:
        signum = _pending[-1]
        _pending.clear()
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def clear_interrupt():
    """Forget signals once their exception has been handled."""
    _pending.clear()
