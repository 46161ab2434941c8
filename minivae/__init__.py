"""minivae: approximation and amortization gaps of VAEs, from scratch in NumPy/Numba/CuPy."""

__version__ = "0.2.0"
