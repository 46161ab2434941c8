"""Progress on stderr through tqdm: count/total, rate, ETA and live metrics.

On a terminal, tqdm's redrawn bar. Anywhere else (a log file, a pipe) a redraw would pile up as
one endless line, so the same numbers go out as plain lines: one every `every` seconds (default
30, or $MINIVAE_PROGRESS_EVERY) and a last one at close; a stage shorter than that prints nothing.
"""
import os
import sys

from tqdm import tqdm

from .errors import check_interrupt

LINE_FORMAT = ("{desc} {n_fmt}/{total_fmt} ({percentage:.0f}%) elapsed {elapsed} ETA {remaining} "
               "[{rate_fmt}{postfix}]")


class _Lines:
    """A file for tqdm that writes each redraw ('\\r' + text + padding) as one line of its own."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, s):
        s = s.replace("\r", "").rstrip()
        if s:
            self.stream.write(s + "\n")

    def flush(self):
        self.stream.flush()


def _every():
    return float(os.environ.get("MINIVAE_PROGRESS_EVERY", "30"))


class Progress:
    """A bar over `total` units: `update(n=1, **metrics)` counts n more, `close()` ends it.
    enabled=False prints nothing; `every` (seconds) spaces the plain lines of a non-terminal."""

    def __init__(self, total, desc="", enabled=True, stream=None, every=None):
        self.total, self.desc, self.n = total, desc, 0
        self.bar = None
        if not enabled:
            return
        stream = stream or sys.stderr
        if getattr(stream, "isatty", lambda: False)():
            self.bar = tqdm(total=total, desc=desc, file=stream, mininterval=0.2, dynamic_ncols=True)
        else:
            every = _every() if every is None else every
            # miniters=1: a line is due on time alone; delay: no line at all for a short stage
            self.bar = tqdm(total=total, desc=desc, file=_Lines(stream), mininterval=every, delay=every,
                            miniters=1, bar_format=LINE_FORMAT)

    def update(self, n=1, **metrics):
        check_interrupt()                 # a signal whose exception was swallowed ends the run here
        self.n += n
        if self.bar is None:
            return
        if metrics:
            self.bar.set_postfix_str(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in metrics.items()), refresh=False)
        self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def epoch_line(epoch, total, seconds, text):
    """'epoch i of N: text (t s, ETA h:mm:ss)'; the ETA is the mean of the last (up to) 10 epoch
    times in `seconds` (the curve, resumed epochs included) times the epochs still to run."""
    recent = list(seconds)[-10:]
    eta = sum(recent) / len(recent) * (total - epoch) if recent else 0.0
    last = recent[-1] if recent else 0.0
    return f"epoch {epoch} of {total}: {text}  ({last:.1f}s, ETA {tqdm.format_interval(eta)})"
