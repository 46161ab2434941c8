"""The environment variables that size the thread pools of BLAS, OpenMP and Numba. Imports
nothing: cli.py reads them before numpy loads (the pools size themselves when they load)."""

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
