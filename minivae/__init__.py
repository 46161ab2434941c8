"""minivae: approximation and amortization gaps of VAEs, from scratch in NumPy/Numba/CuPy."""

__version__ = "0.1.0"
