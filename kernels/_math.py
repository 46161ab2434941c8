"""exp, expm1 and log1p on the ranges the kernels need, as code LLVM can vectorise.

Without SVML, `math.exp` inside an `@njit` loop is a scalar libm call per element, which
stops the loop from using SIMD. These are branch-free polynomials instead (a few ulp):

    x = n ln2 + r, |r| <= ln2/2  (Cody-Waite, n = round(x / ln2))
    expm1(r) = r + r^2 P(r)      (Cephes' minimax P in float32, Taylor to r^13 in float64)
    exp(x) = 2^n (1 + expm1(r)),  expm1(x) = 2^n expm1(r) + (2^n - 1)
    log1p(e) = 2 atanh(s), s = e / (2 + e)   (for e > sqrt(2) - 1: ln2 + log1p((e - 1) / 2))

2^n is built from its bits. Domains: exp and expm1 take x <= 0 (exp is 0 below -708 in
float64 and -87 in float32, where it would go subnormal); log1p takes 0 <= e <= 1. NaN
propagates. CUDA kernels use `math.exp` etc. (fast on the device) and never call these.

Numba's on-disk cache (`cache=True`) checks only the kernel's own file: after editing this
one, delete kernels/__pycache__ so that the kernels inlining it recompile.
"""
import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload


@intrinsic
def _bits_to_float(typingctx, n):
    """Reinterpret int32 bits as float32 and int64 bits as float64."""
    if n == types.int32:
        ret, lltype = types.float32, ir.FloatType()
    elif n == types.int64:
        ret, lltype = types.float64, ir.DoubleType()
    else:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], lltype)

    return ret(n), codegen


# FMA only (reassociation would break Cody-Waite); no ZeroDivisionError checks (they block SIMD)
_OPTS = dict(fastmath={"contract"}, error_model="numpy")


def _family(ft, it, mant_bits, bias, lo, c1, c2, p_exp, p_log):
    """The four functions for float type `ft` (constants of that type keep the maths in it)."""
    LO, LOG2E, HALF = ft(lo), ft(1.4426950408889634), ft(0.5)
    C1, C2, ONE, TWO, ZERO = ft(c1), ft(c2), ft(1), ft(2), ft(0)
    LN2, SPLIT = ft(math.log(2)), ft(math.sqrt(2) - 1)
    PE = tuple(ft(c) for c in p_exp)   # highest power first
    PL = tuple(ft(c) for c in p_log)
    BIAS, SHIFT = it(bias), it(mant_bits)

    @njit(**_OPTS)
    def core(x):  # x <= 0 -> (2^n, expm1(r))
        if x < LO:
            x = LO
        fn = np.floor(x * LOG2E + HALF)
        r = (x - fn * C1) - fn * C2
        p = PE[0]
        for c in PE[1:]:
            p = p * r + c
        two_n = _bits_to_float(it((it(fn) + BIAS) << SHIFT))
        return two_n, r + r * r * p

    def exp_nonpos(x):
        two_n, em1 = core(x)
        y = two_n + two_n * em1
        return ZERO if x < LO else y

    def expm1_nonpos(x):
        two_n, em1 = core(x)
        return two_n * em1 + (two_n - ONE)

    def expm1_exp_nonpos(x):
        two_n, em1 = core(x)
        return two_n * em1 + (two_n - ONE), ZERO if x < LO else two_n + two_n * em1

    def log1p_unit(x):  # 0 <= x <= 1
        big = x > SPLIT
        u = (x - ONE) * HALF if big else x
        s = u / (TWO + u)
        s2 = s * s
        p = PL[0]
        for c in PL[1:]:
            p = p * s2 + c
        y = TWO * s + TWO * s * s2 * p
        return y + LN2 if big else y

    return exp_nonpos, expm1_nonpos, expm1_exp_nonpos, log1p_unit


# Cephes expf: C1 + C2 = ln2, C1 exact in few bits; P minimax on |r| <= ln2/2.
_F32 = _family(np.float32, np.int32, 23, 127, -87.0, 0.693359375, -2.12194440e-4,
               (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                1.6666665459e-1, 5.0000001201e-1),
               tuple(1.0 / k for k in (11, 9, 7, 5, 3)))
# fdlibm's split of ln2; Taylor coefficients 1/k!, k = 13..2 (truncation < 1e-17 relative).
_F64 = _family(np.float64, np.int64, 52, 1023, -708.0, 6.93147180369123816490e-01,
               1.90821492927058770002e-10,
               tuple(1.0 / math.factorial(k) for k in range(13, 1, -1)),
               tuple(1.0 / k for k in (23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3)))


def exp_nonpos(x):
    """exp(x) for x <= 0 (vectorisable inside @njit; plain math.exp from Python)."""
    return math.exp(x)


def expm1_nonpos(x):
    """expm1(x) for x <= 0."""
    return math.expm1(x)


def expm1_exp_nonpos(x):
    """(expm1(x), exp(x)) for x <= 0, sharing one reduction."""
    return math.expm1(x), math.exp(x)


def log1p_unit(x):
    """log1p(x) for 0 <= x <= 1."""
    return math.log1p(x)


def _register(pyfunc, index):
    @overload(pyfunc, jit_options=_OPTS)
    def _ov(x):
        if x == types.float32:
            return _F32[index]
        if x == types.float64:
            return _F64[index]


for _i, _f in enumerate((exp_nonpos, expm1_nonpos, expm1_exp_nonpos, log1p_unit)):
    _register(_f, _i)
