"""Figure 2: posteriors of a VAE with a 2-D latent, for four training datapoints.

Rows: the true posterior p(z|x) (on a grid), the amortized FFG q(z|x), the optimal FFG and the
optimal Flow (local q*, fitted per datapoint as in paper 6.4). The Flow's marginal q(zT) has no
closed form (its auxiliary v is integrated out), so its panel shows a smoothed histogram of
samples. The four datapoints are picked automatically, to show the paper's four phenomena:
A: the smallest inference gap (FFG fits well), B: the strongest correlation between the two
latents, C: the largest inference gap among unimodal posteriors (amortization failure),
D: the most bimodal posterior.
"""
import numpy as np

from ..model import model
from ..backend import normal, to_numpy
from ..io import atomic_path
from ..plots.plotting import pyplot
from ..model.densities import log_diag_normal
from ..estimators.localopt import fit_local, local_elbo
from ..model.objectives import log_weights
from ..model.posteriors import get_family


def grid_log_joint(params, cfg, x, lo, hi, n=121, chunk=50000, offset=(0.0, 0.0)):
    """log p(x, z) on an n x n grid over offset + [lo, hi]^2 for each row of x: (B, n, n),
    and the (unshifted) axis."""
    g = np.linspace(lo, hi, n)
    zz = np.stack(np.meshgrid(g + offset[0], g + offset[1], indexing="xy"), -1)
    zz = zz.reshape(-1, 2).astype(cfg.dtype)
    out = np.empty((len(x), len(zz)))
    for i, xi in enumerate(x):
        for s in range(0, len(zz), chunk):
            z = zz[s:s + chunk]
            lj, _ = model.log_joint(params, cfg, np.broadcast_to(xi, (len(z), len(xi))), z)
            out[i, s:s + len(z)] = lj
    return out.reshape(len(x), n, n), g


def posterior_summary(lj, g, offset=(0.0, 0.0)):
    """log p(x) by quadrature, posterior mean/cov/correlation and mode ratio from grid values
    (lj over offset + g on each axis, as grid_log_joint gives them)."""
    dz = (g[1] - g[0]) ** 2
    m = lj.max((1, 2), keepdims=True)
    w = np.exp(lj - m)
    logpx = np.log(w.sum((1, 2)) * dz) + m[:, 0, 0]
    w = w / w.sum((1, 2), keepdims=True)
    Z1, Z2 = np.meshgrid(g, g, indexing="xy")
    m1, m2 = (w * Z1).sum((1, 2)), (w * Z2).sum((1, 2))
    v1 = (w * Z1 ** 2).sum((1, 2)) - m1 ** 2
    v2 = (w * Z2 ** 2).sum((1, 2)) - m2 ** 2
    c = (w * Z1 * Z2).sum((1, 2)) - m1 * m2
    corr = c / np.sqrt(v1 * v2)
    return dict(logpx=logpx, mean=np.stack([m1 + offset[0], m2 + offset[1]], 1),
                std=np.sqrt(np.stack([v1, v2], 1)),
                corr=corr, mode_ratio=np.array([_second_mode(wi) for wi in w]))


def refined_summary(params, cfg, x, lo=-8, hi=8, n_wide=161, n_zoom=121):
    """posterior_summary of each row of x, two-pass: a wide grid finds where the posterior is
    (and its modes), then a grid over its mean +- 6 std gives log p(x) and the moments. The
    second pass matters: posteriors narrower than the wide grid's spacing are common (std 0.03
    at spacing 0.1 here), and quadrature on too coarse a grid misses log p(x) by tenths of a nat,
    enough to put an ELBO "above" it and to mis-pick the datapoints."""
    lj, g = grid_log_joint(params, cfg, x, lo, hi, n_wide)
    wide = posterior_summary(lj, g)
    parts = []
    for i in range(len(x)):
        centre = wide["mean"][i]
        half = min(hi, 6 * wide["std"][i].max() + 0.2)
        lj_i, g_i = grid_log_joint(params, cfg, x[i:i + 1], -half, half, n_zoom, offset=centre)
        parts.append(posterior_summary(lj_i, g_i, centre))
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out["mode_ratio"] = wide["mode_ratio"]                 # modes: the wide view sees them all
    return out


def _second_mode(w, min_dip=0.5, min_cells=4):
    """Height of the second-highest mode relative to the highest (0: unimodal). A local
    maximum counts as a mode only if it lies at least `min_cells` grid cells from the highest
    peak and the density on the straight line between them dips below `min_dip` times its
    height: grid noise, or a ridge narrower than the grid spacing, is not a second mode."""
    c = w[1:-1, 1:-1]
    peak = np.ones_like(c, bool)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di or dj:
                peak &= c >= w[1 + di:w.shape[0] - 1 + di, 1 + dj:w.shape[1] - 1 + dj]
    ij = np.argwhere(peak) + 1
    if len(ij) < 2:                          # one mode, or the peak sits on the grid's edge
        return 0.0
    heights = w[ij[:, 0], ij[:, 1]]
    order = np.argsort(heights)[::-1]
    top = ij[order[0]]
    for k in order[1:]:
        if np.abs(ij[k] - top).max() < min_cells:
            continue
        t = np.linspace(0, 1, 50)[:, None]
        line = np.rint(top + t * (ij[k] - top)).astype(int)
        if w[line[:, 0], line[:, 1]].min() < min_dip * heights[k]:
            return heights[k] / heights[order[0]]
    return 0.0


def amortized_elbo(params, cfg, x, rng, k=1000):
    family = get_family(cfg)
    h, _ = model.encode(params, cfg, x)
    logw, _ = log_weights(params, cfg, family, x, h, normal(rng, (len(x), k, family.noise_dim), x))
    return to_numpy(logw).mean(1), to_numpy(h)


def pick_four(summary, gap):
    """Indices (A, B, C, D) into the candidates, all different."""
    uni = summary["mode_ratio"] < 0.2
    chosen = []

    def best(score, mask):
        score = np.where(mask, score, -np.inf)
        score[chosen] = -np.inf
        chosen.append(int(np.argmax(score)))

    best(-gap, uni)                                   # A: FFG fits well
    best(np.abs(summary["corr"]), uni)                # B: correlated latents
    best(gap, uni)                                    # C: amortization failure
    best(summary["mode_ratio"], np.ones_like(uni))    # D: bimodal
    return chosen


def compute(params, cfg, x_pool, seed=0, localopt=None, n_grid=121, flow_samples=50000):
    """Everything the figure shows, as arrays (no plotting): a dict."""
    rng = np.random.default_rng(seed)
    x_pool = x_pool.astype(cfg.dtype)
    summ = refined_summary(params, cfg, x_pool)            # wide: posteriors can sit far out
    elbo, h = amortized_elbo(params, cfg, x_pool, rng)
    gap = summ["logpx"] - elbo
    idx = pick_four(summ, gap)
    x = x_pool[idx]
    s = {**dict(max_steps=10000, samples=100, lr=1e-3, check_every=100, patience=10), **(localopt or {})}
    starts = dict(prior=None,                                         # the paper's N(0, I)
                  encoder=h[idx],                                     # the amortized q
                  posterior=np.concatenate([summ["mean"][idx],         # the grid's moments
                                            2 * np.log(summ["std"][idx])], 1))
    fits = {q: best_of_starts(params, cfg.replace(q=q), x, starts, rng, s) for q in ("ffg", "flow")}
    flow = get_family(cfg.replace(q="flow"))
    eps = normal(rng, (len(x), flow_samples, flow.noise_dim), x)
    zf, _, _ = flow.sample({**params, **fits["flow"]["local"]}, fits["flow"]["local"]["h"], eps)
    zf = to_numpy(zf)
    h_opt = to_numpy(fits["ffg"]["local"]["h"])
    out = {k: [] for k in ("grid", "true", "amortized", "optimal_ffg", "optimal_flow")}
    for c in range(len(x)):
        # each panel column zooms on its own posterior: mean +- 4 std, square
        centre = summ["mean"][idx[c]]
        half = min(8.0, 4 * summ["std"][idx[c]].max() + 0.2)
        lj_c, g = grid_log_joint(params, cfg, x[c:c + 1], -half, half, n_grid, offset=centre)
        out["grid"].append(np.stack([g + centre[0], g + centre[1]]))
        zz = np.stack(np.meshgrid(g + centre[0], g + centre[1], indexing="xy"), -1)
        out["true"].append(lj_c[0])
        out["amortized"].append(log_diag_normal(zz, h[idx[c], :2], h[idx[c], 2:]))
        out["optimal_ffg"].append(log_diag_normal(zz, h_opt[c, :2], h_opt[c, 2:]))
        hist = np.histogram2d(zf[c, :, 1], zf[c, :, 0], bins=n_grid,
                              range=[[g[0] + centre[1], g[-1] + centre[1]],
                                     [g[0] + centre[0], g[-1] + centre[0]]], density=True)[0]
        out["optimal_flow"].append(np.log(_smooth(hist[None])[0] + 1e-300))
    result = {k: np.stack(v) for k, v in out.items()}
    result.update(index=np.asarray(idx), logpx=summ["logpx"][idx], amortized_elbo=elbo[idx],
                  corr=summ["corr"][idx], mode_ratio=summ["mode_ratio"][idx],
                  optimal_ffg_steps=fits["ffg"]["steps"], optimal_flow_steps=fits["flow"]["steps"],
                  optimal_ffg_elbo=fits["ffg"]["elbo"], optimal_flow_elbo=fits["flow"]["elbo"],
                  optimal_ffg_start=fits["ffg"]["start"], optimal_flow_start=fits["flow"]["start"])
    return result


def best_of_starts(params, cfg, x, starts, rng, s, elbo_samples=5000):
    """q* of family cfg.q fitted from each start in `starts` (name -> h0 (N, P), None for the
    family's own N(0, I)); per datapoint, the fit with the highest L[q*] (`elbo_samples` samples)
    is kept. The figure shows *the* optimum, and a 2-D posterior far from the origin or with
    two modes can hold the paper's single N(0, I) start in a poor local optimum (KL(q||p) is
    mode-seeking). Returns fit_local's dict for the winners plus "elbo" (N,) and "start"
    (N,) names (bytes)."""
    family = get_family(cfg)
    names, fits, elbos = list(starts), [], []
    for name in names:
        h0 = starts[name]
        fit = fit_local(params, cfg, family, x, rng, s["max_steps"], s["samples"], s["lr"],
                        s["check_every"], s["patience"],
                        h0=None if h0 is None else np.asarray(h0, x.dtype)[:, :family.n_out])
        fits.append(fit)
        elbos.append(local_elbo(params, cfg, family, x, fit["local"], rng, elbo_samples)[0])
    win = np.argmax(np.stack(elbos), 0)                                # (N,)
    rows = np.arange(len(x))
    pick = lambda arrays: np.stack([to_numpy(a) for a in arrays])[win, rows]   # noqa: E731
    return dict(local={k: pick([f["local"][k] for f in fits]) for k in fits[0]["local"]},
                steps=pick([f["steps"] for f in fits]), elbo=pick(elbos),
                start=np.array(names, dtype="S")[win])   # bytes: HDF5-friendly


def _smooth(d, passes=2):
    """A light 3x3 box blur of each histogram, so sampled contours are not ragged."""
    for _ in range(passes):
        p = np.pad(d, ((0, 0), (1, 1), (1, 1)), mode="edge")
        d = sum(p[:, 1 + i:p.shape[1] - 1 + i, 1 + j:p.shape[2] - 1 + j]
                for i in (-1, 0, 1) for j in (-1, 0, 1)) / 9
    return d


def plot(result, path):
    """The 4 x 4 grid of contour plots, written atomically to `path` (PNG)."""
    plt = pyplot()
    rows = [("True posterior", "true"), ("Amortized FFG", "amortized"),
            ("Optimal FFG", "optimal_ffg"), ("Optimal Flow", "optimal_flow")]
    fig, axes = plt.subplots(4, 4, figsize=(10, 10))
    for r, (title, key) in enumerate(rows):
        for c in range(4):
            ax = axes[r, c]
            logd = result[key][c]
            d = np.exp(logd - logd.max())
            g1, g2 = result["grid"][c]
            ax.contour(g1, g2, d, levels=np.linspace(0.05, 0.95, 7), cmap="Blues")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("ABCD"[c])
            if c == 0:
                ax.set_ylabel(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
