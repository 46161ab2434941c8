"""Fused Numba kernels (CPU, `@njit`) and their CUDA twins (`@cuda.jit`) for the hot loops of
AIS/HMC and per-datapoint optimisation; the matrix products stay in BLAS. Each kernel file
holds `name_ref` (the vectorised spec), `_name_cpu`, `_name_cuda` and the dispatcher `name`.
"""
from . import _dispatch

_dispatch.setup_threads()

from .adam import adam_batched  # noqa: E402
from .ais_weights import ais_log_weight  # noqa: E402
from .bernoulli import bernoulli_grad  # noqa: E402
from .decoder import decoder_buffers, decoder_grad, decoder_sizes  # noqa: E402
from .elu import bias_elu, elu_backward  # noqa: E402
from .hmc_accept import hmc_accept  # noqa: E402
from .leapfrog import leapfrog_momentum, leapfrog_momentum_position, leapfrog_position  # noqa: E402

__all__ = ["adam_batched", "ais_log_weight", "bernoulli_grad", "bias_elu", "decoder_buffers",
           "decoder_grad", "decoder_sizes", "elu_backward", "hmc_accept", "leapfrog_momentum",
           "leapfrog_momentum_position", "leapfrog_position"]
