"""JAX (CPU, jit) peer of minivae's three benchmark workloads, same weights and data.

  train_epoch  one epoch of the paper MNIST FFG VAE at batch 100: single-sample ELBO, Adam
               lr 1e-3 written in jax.numpy; the whole step (batch gather, noise, forward,
               grad, Adam) is one jitted function
  ais_leapfrog HMC transitions on log p(z) + beta log p(x|z) of the decoder 50-200-200-784,
               rows = datapoints x chains; one jitted transition = fresh momentum, L leapfrog
               steps (lax.fori_loop), Metropolis accept
  qstar_ffg    Adam on per-datapoint (mu, logvar) of 100 datapoints x 100 samples, decoder
               fixed; one jitted step
  train_epoch_flow, qstar_flow  the same with the paper's flow q (2 steps, nets Z-100-100-*;
               for q* every net per datapoint)

    python benchmarks/peers/jax_peer.py [--weights init.npz] [--workloads a,b,c] [--threads 1]

Compile time is excluded (every jitted function runs once before the clock starts) and every
timed region ends with block_until_ready. Prints one JSON line per workload;
{"skipped": "jax not installed"} when jax is absent. Only --threads 1 can be enforced
(XLA_FLAGS); other counts leave XLA's default pool.
"""
import math
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common  # noqa: E402

common.early_threads()

import numpy as np  # noqa: E402
from paper_model import paper_model  # noqa: E402

SIDE = "jax"
B1, B2, ADAM_EPS = 0.9, 0.999, 1e-8


def adam_init(params):
    def zeros():        # m and v need buffers of their own: steps donate them
        return jax.tree_util.tree_map(jnp.zeros_like, params)
    return zeros(), zeros(), jnp.zeros((), jnp.float32)


def adam_ascent(params, grads, state, lr):
    """Textbook Adam, ascending: the same update as minivae.model.optim.adam_step."""
    m, v, t = state
    t = t + 1
    m = jax.tree_util.tree_map(lambda m, g: B1 * m + (1 - B1) * g, m, grads)
    v = jax.tree_util.tree_map(lambda v, g: B2 * v + (1 - B2) * g * g, v, grads)
    c1, c2 = 1 - B1 ** t, 1 - B2 ** t
    params = jax.tree_util.tree_map(
        lambda p, m, v: p + lr * (m / c1) / (jnp.sqrt(v / c2) + ADAM_EPS), params, m, v)
    return params, (m, v, t)


def block(tree):
    jax.tree_util.tree_map(lambda a: a.block_until_ready(), tree)


def train_epoch(weights, args, flow=False):
    ws = {k: jnp.asarray(v) for k, v in weights.items() if flow or not k.startswith("q.")}
    B, Z = common.BATCH, common.LATENT
    E = 2 * Z if flow else Z
    elbo = vae.elbo_flow if flow else vae.elbo_ffg

    def batch_bound(ws, xb, eps):
        return elbo(ws, xb, vae.mlp(ws, "enc", xb), eps).mean()

    xc, ec = common.check_batch_flow() if flow else common.check_batch()
    value, grads = jax.jit(jax.value_and_grad(batch_bound))(ws, xc, ec[:, None, :])
    check = dict(check_bound=float(value), check_grad_norm=math.sqrt(sum(
        float((np.asarray(g, np.float64) ** 2).sum()) for g in jax.tree_util.tree_leaves(grads))))

    @partial(jax.jit, donate_argnums=(0, 1))
    def step(ws, opt, key, x_all, perm, b):
        key, sub = jax.random.split(key)
        xb = x_all[jax.lax.dynamic_slice(perm, (b * B,), (B,))].astype(jnp.float32)
        eps = jax.random.normal(sub, (B, 1, E))
        value, grads = jax.value_and_grad(batch_bound)(ws, xb, eps)
        ws, opt = adam_ascent(ws, grads, opt, 1e-3)
        return ws, opt, key, value

    x_np = common.mnist_train()
    x_all = jnp.asarray(x_np)                   # uint8 (N, D) on the device; cast per batch
    n_full = len(x_np) // B
    n = n_full if args.batches is None else min(args.batches, n_full)
    state = dict(ws=ws, opt=adam_init(ws), key=jax.random.PRNGKey(0))

    def run(n_steps):
        state["key"], sub = jax.random.split(state["key"])
        perm = jax.random.permutation(sub, len(x_np))
        running = 0.0
        for b in range(n_steps):
            state["ws"], state["opt"], state["key"], value = step(
                state["ws"], state["opt"], state["key"], x_all, perm, b)
            running += float(value)              # read back each step, as minivae's loop does
        block(state["ws"])
        return running

    run(5)                                       # compile + warm-up
    timing = common.time_repeats(lambda: run(n), args.epochs_timed, warmup=0)
    common.emit_epoch(SIDE, timing, n, n_full, workload="train_epoch_flow" if flow else "train_epoch",
                      q="flow" if flow else "ffg", **check, **meta())


def ais_leapfrog(weights, args):
    ws = {k: jnp.asarray(v) for k, v in weights.items() if k.startswith("dec.")}
    x_np, z_np = common.ais_inputs(args.ais_data, args.ais_chains)
    x = jnp.asarray(x_np)
    beta, eps, L = common.AIS_BETA, common.AIS_STEP, common.AIS_LEAPFROG

    def log_joint(z):
        logp = vae.log_prior(z) + beta * vae.log_lik(ws, x, z)
        return logp.sum(), logp

    def log_joint_and_grad(z):
        g, logp = jax.grad(log_joint, has_aux=True)(z)
        return logp, g

    @jax.jit
    def transition(z, logp, g, key):
        key, kp, ku = jax.random.split(key, 3)
        p = jax.random.normal(kp, z.shape)
        h0 = logp - 0.5 * (p * p).sum(-1)

        def leapfrog(i, c):
            zn, pn, _, _ = c
            zn = zn + eps * pn
            logpn, gn = log_joint_and_grad(zn)
            pn = pn + jnp.where(i < L - 1, eps, 0.5 * eps) * gn
            return zn, pn, logpn, gn

        zn, pn, logpn, gn = jax.lax.fori_loop(0, L, leapfrog, (z, p + 0.5 * eps * g, logp, g))
        h1 = logpn - 0.5 * (pn * pn).sum(-1)
        accept = jnp.log(jax.random.uniform(ku, logp.shape)) < h1 - h0
        a = accept[:, None]
        return jnp.where(a, zn, z), jnp.where(accept, logpn, logp), jnp.where(a, gn, g), key

    logp0, g0 = jax.jit(log_joint_and_grad)(jnp.asarray(z_np))
    check = dict(check_logp_mean=float(logp0.mean()),
                 check_grad_norm=float(np.linalg.norm(np.asarray(g0, np.float64))))
    state = [jnp.asarray(z_np), logp0, g0, jax.random.PRNGKey(0)]

    def run():
        for _ in range(args.ais_transitions):
            state[:] = transition(*state)
        block(state)

    common.emit_ais(SIDE, common.time_repeats(run, args.repeats, warmup=1), args, check, **meta())


def qstar_ffg(weights, args):
    ws = {k: jnp.asarray(v) for k, v in weights.items() if k.startswith("dec.")}
    x_np, eps_np = common.qstar_inputs(args.q_data, args.q_samples)
    x = jnp.asarray(x_np)
    h = jnp.zeros((args.q_data, 2 * common.LATENT), jnp.float32)      # N(0, I) init

    def objective(h, eps):
        return vae.elbo_ffg(ws, x, h, eps).sum()     # per-datapoint objectives are independent

    check = dict(check_bound=float(jax.jit(objective)(h, jnp.asarray(eps_np))) / args.q_data)
    common.emit_qstar(SIDE, time_ascent(objective, h, eps_np.shape, args), args, check, **meta())


def time_ascent(objective, params, shape, args):
    """Timing of args.q_steps jitted Adam ascent steps on objective(params, eps), fresh N(0, I)
    noise of `shape` each step."""
    @partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt, key):
        key, sub = jax.random.split(key)
        g = jax.grad(objective)(params, jax.random.normal(sub, shape))
        params, opt = adam_ascent(params, g, opt, 1e-3)
        return params, opt, key

    state = [params, adam_init(params), jax.random.PRNGKey(0)]

    def run():
        for _ in range(args.q_steps):
            state[:] = step(*state)
        block(state[0])

    return common.time_repeats(run, args.repeats, warmup=1)


def qstar_flow(weights, args):
    """Adam on per-datapoint h and flow nets (W (N, in, out)), decoder fixed; one jitted step."""
    dec = {k: jnp.asarray(v) for k, v in weights.items() if k.startswith("dec.")}
    x_np, eps_np, nets = common.qstar_flow_inputs(args.q_data, args.q_samples)
    x = jnp.asarray(x_np)
    local = {"h": jnp.zeros((args.q_data, 2 * common.LATENT), jnp.float32),
             **{k: jnp.asarray(v) for k, v in nets.items()}}

    def objective(local, eps):
        return vae.elbo_flow({**dec, **local}, x, local["h"], eps).sum()   # independent per datapoint

    value, g = jax.jit(jax.value_and_grad(objective))(local, jnp.asarray(eps_np))
    check = dict(check_bound=float(value) / args.q_data, check_grad_norm=math.sqrt(sum(
        float((np.asarray(a, np.float64) ** 2).sum()) for a in jax.tree_util.tree_leaves(g))))
    common.emit_qstar(SIDE, time_ascent(objective, local, eps_np.shape, args), args, check,
                      workload="qstar_flow", **meta())


def matmul_peak(weights, args):
    n = 2048
    a = jax.random.normal(jax.random.PRNGKey(1), (n, n))
    b = jax.random.normal(jax.random.PRNGKey(2), (n, n))
    mm = jax.jit(jnp.matmul)
    timing = common.time_repeats(lambda: mm(a, b).block_until_ready(), 5, warmup=2)
    common.emit_matmul(SIDE, timing, n, **meta())


def meta():
    return dict(version=jax.__version__, backend=jax.default_backend(),
                threads=1 if "intra_op_parallelism_threads=1" in __import__("os").environ.get(
                    "XLA_FLAGS", "") else "default")


WORKLOADS = dict(a=train_epoch, b=ais_leapfrog, c=qstar_ffg, d=partial(train_epoch, flow=True),
                 e=qstar_flow, m=matmul_peak)


def load(args):
    """Import jax into this module and build the model on it; False where jax is not installed."""
    global jax, jnp, vae
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return False
    vae = paper_model(jnp.exp, jax.nn.elu, jax.nn.softplus, jax.nn.sigmoid)
    return True


def main(argv=None):
    return common.peer_main(__doc__, SIDE, WORKLOADS, load, argv)


if __name__ == "__main__":
    sys.exit(main())
