"""The paper's MNIST VAE written once for both peers, over the four elementwise functions an
array library names differently (torch.exp / jnp.exp, ...). Everything else (`@`, slicing,
`.sum(-1)`, broadcasting) is spelled the same in torch and jax.numpy, so torch_peer.py and
jax_peer.py compute the same model from the same lines.

Weights are minivae's flat dict (`dec.fc0.W` (in, out), ...): shared nets (W (in, out)) or one
per datapoint (W (B, in, out), b (B, 1, out)); the same matmul broadcasts over both.
"""
import math
from types import SimpleNamespace

LOG2PI = math.log(2 * math.pi)


def log_prior(z):
    """log N(z; 0, I) over the last axis."""
    return -0.5 * ((z * z).sum(-1) + z.shape[-1] * LOG2PI)


def paper_model(exp, elu, softplus, sigmoid):
    """The model's functions over one array library: mlp, log_lik, log_prior, elbo_ffg,
    flow_sample, elbo_flow (a namespace of closures)."""

    def mlp(ws, prefix, x, n_layers=3):
        for i in range(n_layers):
            x = x @ ws[f"{prefix}.fc{i}.W"] + ws[f"{prefix}.fc{i}.b"]
            if i < n_layers - 1:
                x = elu(x)
        return x

    def log_lik(ws, x, z):
        """log Bernoulli(x; sigmoid(decoder(z))) summed over pixels; x broadcasts against z's rows."""
        logits = mlp(ws, "dec", z)
        return (x * logits - softplus(logits)).sum(-1)

    def elbo_ffg(ws, x, h, eps):
        """Per-datapoint ELBO estimate with q = N(mu, diag exp(logvar)), h = [mu, logvar]:
        x (B, D), h (B, 2Z), eps (B, S, Z) -> (B,), the mean over the S samples."""
        Z = eps.shape[-1]
        mu, logvar = h[:, None, :Z], h[:, None, Z:]
        z = mu + exp(0.5 * logvar) * eps
        logq = -0.5 * (eps * eps + logvar + LOG2PI).sum(-1)
        return (log_lik(ws, x[:, None, :], z) + log_prior(z) - logq).mean(1)

    def flow_sample(ws, h, eps, steps=2):
        """The paper's flow (minivae.model.flow): zT (B, K, Z) and the bound's logq (B, K) for
        h = [mu0, logvar0] (B, 2Z), eps (B, K, 2Z)."""
        Z = eps.shape[-1] // 2
        mu0, lv0 = h[:, None, :Z], h[:, None, Z:]
        ez, ev = eps[..., :Z], eps[..., Z:]
        z = mu0 + exp(0.5 * lv0) * ez
        qv = mlp(ws, "q.qv", z)
        v = qv[..., :Z] + exp(0.5 * qv[..., Z:]) * ev
        logdet = 0.0
        for t in range(steps):
            a1, m1 = mlp(ws, f"q.s{t}.s1", z), mlp(ws, f"q.s{t}.m1", z)
            v = v * 2 * sigmoid(a1) + m1
            a2, m2 = mlp(ws, f"q.s{t}.s2", v), mlp(ws, f"q.s{t}.m2", v)
            z = z * 2 * sigmoid(a2) + m2
            logdet = logdet + (2 * math.log(2.0) - softplus(-a1) - softplus(-a2)).sum(-1)
        rv = mlp(ws, "q.rv", z)
        mr, lr = rv[..., :Z], rv[..., Z:]
        logr = -0.5 * ((v - mr) ** 2 * exp(-lr) + lr + LOG2PI).sum(-1)
        logq0 = -0.5 * (ez * ez + ev * ev + lv0 + qv[..., Z:] + 2 * LOG2PI).sum(-1)
        return z, logq0 - logdet - logr

    def elbo_flow(ws, x, h, eps):
        """elbo_ffg with the flow q: eps (B, S, 2Z) -> (B,)."""
        z, logq = flow_sample(ws, h, eps)
        return (log_lik(ws, x[:, None, :], z) + log_prior(z) - logq).mean(1)

    return SimpleNamespace(mlp=mlp, log_lik=log_lik, log_prior=log_prior, elbo_ffg=elbo_ffg,
                           flow_sample=flow_sample, elbo_flow=elbo_flow)
