"""Finite-difference gradient check (float64, one random direction, central differences).

Compares <grad f(x), v> with (f(x + h v) - f(x - h v)) / 2h for a random direction v over
all inputs at once (Chainer's check): one scalar per call, loud on failure.
"""
import numpy as np


def check_grads(f, inputs, grads, rng=None, h=1e-6, rtol=1e-5, atol=1e-8, trials=3):
    """f(inputs) -> scalar; grads: dict with the analytic gradient for each key in inputs.

    Raises AssertionError naming the mismatch; returns the worst relative error.
    """
    rng = rng or np.random.default_rng(0)
    worst = 0.0
    for _ in range(trials):
        v = {k: rng.standard_normal(np.shape(a)) for k, a in inputs.items()}
        plus = {k: a + h * v[k] for k, a in inputs.items()}
        minus = {k: a - h * v[k] for k, a in inputs.items()}
        numeric = (f(plus) - f(minus)) / (2 * h)
        analytic = sum(float(np.sum(grads[k] * v[k])) for k in inputs)
        err = abs(numeric - analytic)
        worst = max(worst, err / (abs(numeric) + 1e-12))
        if err > atol + rtol * abs(numeric):
            raise AssertionError(f"gradient check failed: analytic {analytic:.10g} vs "
                                 f"numeric {numeric:.10g} (|diff| {err:.3g})")
    return worst


def check_each(f, inputs, grads, **kw):
    """check_grads one input at a time, so a failure names the broken key."""
    for k in inputs:
        fixed = dict(inputs)

        def fk(sub, k=k):
            return f({**fixed, k: sub[k]})

        try:
            check_grads(fk, {k: inputs[k]}, {k: grads[k]}, **kw)
        except AssertionError as e:
            raise AssertionError(f"{k}: {e}") from None
