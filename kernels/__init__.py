"""Fused Numba kernels (CPU, `@njit`) and their CUDA twins (`@cuda.jit`) for the hot loops of
training, AIS/HMC and per-datapoint optimisation; the matrix products stay in BLAS. Each kernel
file holds `name_ref` (the vectorised spec), `_name_cpu`, `_name_cuda` and the dispatcher `name`.
Nothing here imports minivae: the library loads this package through `minivae.backend.kernels()`.
"""
from . import _dispatch

_dispatch.setup_threads()

from .adam import adam_dense, adam_rows  # noqa: E402
from .ais_weights import ais_log_weight  # noqa: E402
from .bernoulli import bernoulli_grad  # noqa: E402
from .coupling import coupling_backward, coupling_forward  # noqa: E402
from .elu import bias_elu, elu_backward  # noqa: E402
from .flow_head import flow_head_backward, flow_head_forward  # noqa: E402
from .hmc_accept import hmc_accept  # noqa: E402
from .leapfrog import leapfrog_momentum, leapfrog_momentum_position, leapfrog_position  # noqa: E402
from .reparam import ffg_backward, ffg_forward  # noqa: E402
from .sparse_input import sparse_matmul, sparse_matmul_tn  # noqa: E402
from .tril import tril_pack, tril_pack_outer, tril_unpack  # noqa: E402

__all__ = ["adam_dense", "adam_rows", "ais_log_weight", "bernoulli_grad", "bias_elu", "coupling_backward",
           "coupling_forward", "elu_backward", "ffg_backward", "ffg_forward", "flow_head_backward",
           "flow_head_forward", "hmc_accept", "leapfrog_momentum", "leapfrog_momentum_position",
           "leapfrog_position", "sparse_matmul", "sparse_matmul_tn", "tril_pack", "tril_pack_outer",
           "tril_unpack"]
