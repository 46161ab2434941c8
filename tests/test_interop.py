"""minivae import / export: weights in PyTorch's layout, checked against NumPy from the raw tensors."""
import json
import os

import numpy as np
import pytest

from conftest import run_cli
from minivae.estimators import evaluate
from minivae import interop, io
from minivae.model import model
from minivae.model.config import Config
from minivae.errors import SpecError
from minivae.model.objectives import log_weights
from minivae.model.posteriors import get_family

safetensors_numpy = pytest.importorskip("safetensors.numpy")

D, H, Z = 784, 12, 3


def torch_like(rng, act="elu"):
    """Tensors as an nn.Module's state_dict holds them (weight (out, in), float32): encoder
    D-H-H with separate mu and logvar heads, decoder Z-H-H-D; and the spec naming them."""
    t = {}

    def linear(name, n_in, n_out):
        t[name + ".weight"] = rng.normal(0, 0.5, (n_out, n_in)).astype(np.float32)
        t[name + ".bias"] = rng.normal(0, 0.5, n_out).astype(np.float32)
        return dict(weight=name + ".weight", bias=name + ".bias")

    enc = [linear("enc.0", D, H), linear("enc.2", H, H),
           dict(heads=[linear("fc_mu", H, Z), linear("fc_logvar", H, Z)])]
    dec = [linear("dec.0", Z, H), linear("dec.2", H, H), linear("dec.4", H, D)]
    spec = dict(layout="pytorch", dataset="mnist", likelihood="bernoulli", posterior="ffg",
                activation=act, encoder=dict(layers=enc), decoder=dict(layers=dec))
    return t, spec


def write(tmp_path, tensors, spec, name="w.safetensors"):
    w, s = str(tmp_path / name), str(tmp_path / "spec.json")
    if name.endswith(".npz"):
        np.savez(w, **tensors)
    else:
        safetensors_numpy.save_file(tensors, w)
    with open(s, "w") as f:
        json.dump(spec, f)
    return w, s


def elu(a):
    return np.where(a > 0, a, np.expm1(np.minimum(a, 0)))


def ref_mlp(t, names, h):
    """float64 forward of Linear layers in PyTorch's layout from the raw tensors, ELU between."""
    for i, n in enumerate(names):
        h = h @ t[n + ".weight"].astype(np.float64).T + t[n + ".bias"].astype(np.float64)
        h = elu(h) if i < len(names) - 1 else h
    return h


def ref_loglik(t, x, z):
    logits = ref_mlp(t, ["dec.0", "dec.2", "dec.4"], z)
    return (x * logits - np.logaddexp(0, logits)).sum(-1)


@pytest.fixture
def imported(tmp_path):
    rng = np.random.default_rng(0)
    t, spec = torch_like(rng)
    w, s = write(tmp_path, t, spec)
    ck = str(tmp_path / "m.h5")
    code, out = run_cli(["import", w, "--spec", s, "--out", ck])
    assert code == 0, out
    x = (rng.random((4, D)) < 0.3).astype(np.float64)
    return t, ck, x, rng


def test_import_matches_numpy_from_raw_tensors(imported):
    t, ck, x, rng = imported
    params, cfg, _ = evaluate.load_model(ck, dtype="float64")
    assert (cfg.latent, cfg.enc_hidden, cfg.enc_layers, cfg.dec_layers, cfg.act) == (Z, H, 2, 2, "elu")
    z = rng.normal(size=(4, 5, Z))
    ll, _ = model.log_lik(params, cfg, x, z)
    np.testing.assert_allclose(ll, ref_loglik(t, x[:, None], z), rtol=1e-12)
    h, _ = model.encode(params, cfg, x)                                   # (B, 2Z)
    hid = ref_mlp(t, ["enc.0", "enc.2"], x)
    hid = elu(hid)
    mu = ref_mlp(t, ["fc_mu"], hid)
    logvar = ref_mlp(t, ["fc_logvar"], hid)
    np.testing.assert_allclose(h, np.concatenate([mu, logvar], 1), rtol=1e-12, atol=1e-13)
    eps = rng.normal(size=(4, 7, Z))                                      # L[q] at fixed noise
    logw, _ = log_weights(params, cfg, get_family(cfg), x, h, eps)
    zq = mu[:, None] + np.exp(0.5 * logvar[:, None]) * eps
    logpz = -0.5 * (zq ** 2 + np.log(2 * np.pi)).sum(-1)
    logq = -0.5 * (eps ** 2 + logvar[:, None] + np.log(2 * np.pi)).sum(-1)
    np.testing.assert_allclose(logw.mean(1), (ref_loglik(t, x[:, None], zq) + logpz - logq).mean(1),
                               rtol=1e-12)


def test_torch_module_log_lik_equals_minivae(imported):
    torch = pytest.importorskip("torch")
    t, ck, x, rng = imported
    dec = torch.nn.Sequential(torch.nn.Linear(Z, H), torch.nn.ELU(), torch.nn.Linear(H, H),
                              torch.nn.ELU(), torch.nn.Linear(H, D))
    dec.load_state_dict({k[4:]: torch.from_numpy(v) for k, v in t.items() if k.startswith("dec.")})
    z = rng.normal(size=(4, Z)).astype(np.float32)
    with torch.no_grad():
        logits = dec(torch.from_numpy(z))
        ll_torch = -torch.nn.functional.binary_cross_entropy_with_logits(
            logits, torch.from_numpy(x.astype(np.float32)), reduction="none").sum(-1).numpy()
    params, cfg, _ = evaluate.load_model(ck, dtype="float32")
    ll, _ = model.log_lik(params, cfg, x.astype(np.float32), z)
    np.testing.assert_allclose(ll, ll_torch, rtol=1e-5)


@pytest.mark.parametrize("q", ["ffg", "fullcov", "flow"])
@pytest.mark.parametrize("layout,ext", [("pytorch", "safetensors"), ("minivae", "npz")])
def test_export_then_import_is_exact(tmp_path, q, layout, ext):
    cfg = Config(latent=3, enc_hidden=7, dec_hidden=9, enc_layers=1, dec_layers=2, q=q,
                 flow_steps=1, flow_hidden=5)
    params = model.init_params(cfg, np.random.default_rng(1))
    params = {k: v + np.float32(0.01) * np.arange(v.size, dtype=np.float32).reshape(v.shape)
              for k, v in params.items()}                                 # biases not all zero
    ck, w, ck2 = str(tmp_path / "a.h5"), str(tmp_path / f"m.{ext}"), str(tmp_path / "b.h5")
    io.save_checkpoint(ck, params, cfg)
    code, out = run_cli(["export", ck, "--out", w, "--layout", layout])
    assert code == 0, out
    assert os.path.exists(tmp_path / "m.spec.json")
    code, out = run_cli(["import", w, "--spec", str(tmp_path / "m.spec.json"), "--out", ck2])
    assert code == 0, out
    back = io.load_checkpoint(ck2)
    assert sorted(back["params"]) == sorted(params)
    for k, v in params.items():
        assert back["params"][k].dtype == v.dtype and np.array_equal(back["params"][k], v), k
    fields = ("data_dim", "latent", "q", "enc_hidden", "enc_layers", "dec_hidden", "dec_layers",
              "act", "likelihood", "dtype", "encoder")
    fields += ("flow_steps", "flow_hidden") if q == "flow" else ()
    assert {f: getattr(back["config"], f) for f in fields} == {f: getattr(cfg, f) for f in fields}
    before = open(ck, "rb").read()                       # import never replaces an existing file
    code, out = run_cli(["import", w, "--spec", str(tmp_path / "m.spec.json"), "--out", ck])
    assert code == 2 and "exists" in out and len(out.strip().splitlines()) == 1, out
    assert open(ck, "rb").read() == before


def break_missing(t, s):
    del t["dec.2.weight"]


def break_shape(t, s):
    t["dec.2.weight"] = t["dec.2.weight"][:, :-1].copy()


def break_bias(t, s):
    t["enc.0.bias"] = t["enc.0.bias"][:-1].copy()


def break_nan(t, s):
    t["dec.4.weight"][3, 2] = np.nan


def break_act(t, s):
    s["activation"] = "relu"


def break_latent(t, s):
    s["latent"] = 7


def break_heads(t, s):
    s["encoder"]["layers"][-1] = s["encoder"]["layers"][-1]["heads"][0]      # mu only


def break_order(t, s):
    s["decoder"]["layers"].reverse()


def break_layout(t, s):
    s["layout"] = "minivae"


def break_widths(t, s):
    t["dec.2.weight"] = np.zeros((H + 1, H), np.float32)
    t["dec.2.bias"] = np.zeros(H + 1, np.float32)
    t["dec.4.weight"] = np.zeros((D, H + 1), np.float32)


def break_likelihood(t, s):
    s["likelihood"] = "logistic"


def break_key(t, s):
    s["decoder"]["activaton"] = "elu"


def break_int(t, s):
    t["dec.0.bias"] = np.arange(H)


MISMATCHES = [(break_missing, "'dec.2.weight'", "missing"),
              (break_shape, "'dec.2.weight'", "takes 11 inputs"),
              (break_bias, "'enc.0.bias'", "has shape (11,)"),
              (break_nan, "'dec.4.weight'", "1 non-finite"),
              (break_act, "'relu'", "unknown"),
              (break_latent, "'dec.0.weight'", "latent 7"),
              (break_heads, "'fc_mu.weight'", "needs 6 (mu then logvar)"),
              (break_order, "'dec.2.weight'", "check the layer order"),
              (break_layout, "'dec.0.bias'", "3 outputs in layout in_out"),
              (break_widths, "'dec.2.weight'", "unsupported"),
              (break_likelihood, "logistic", "unsupported"),
              (break_key, "'activaton'", "unknown key"),
              (break_int, "'dec.0.bias'", "floating point")]


@pytest.mark.parametrize("breaker,name,what", MISMATCHES, ids=[m[0].__name__ for m in MISMATCHES])
def test_every_mismatch_is_one_line_naming_the_tensor(tmp_path, breaker, name, what):
    t, spec = torch_like(np.random.default_rng(0))
    breaker(t, spec)
    w, s = write(tmp_path, t, spec)
    ck = tmp_path / "m.h5"
    code, out = run_cli(["import", w, "--spec", s, "--out", str(ck)])
    assert code == 2, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), out
    assert name in lines[0] and what in lines[0], lines[0]
    assert not ck.exists() and not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_npz_and_toml_are_read(tmp_path):
    t, spec = torch_like(np.random.default_rng(0))
    w, _ = write(tmp_path, {k: v.astype(np.float16) for k, v in t.items()}, spec, "w.npz")
    del spec["encoder"]
    lines = ['layout = "pytorch"', 'activation = "elu"', "[decoder]", "layers = ["]
    lines += [f'  {{weight = "{l["weight"]}", bias = "{l["bias"]}"}},' for l in spec["decoder"]["layers"]]
    (tmp_path / "spec.toml").write_text("\n".join(lines + ["]"]) + "\n")
    params, cfg = interop.build(interop.read_spec(str(tmp_path / "spec.toml")), interop.read_tensors(w))
    assert not cfg.encoder and cfg.dec_layers == 2 and not any(k.startswith("enc.") for k in params)
    assert cfg.dtype == "float32"                                          # float16, upcast exactly
    assert np.array_equal(params["dec.fc0.W"], t["dec.0.weight"].astype(np.float16).T)
    with pytest.raises(SpecError, match="not a readable safetensors"):
        (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
        interop.read_tensors(str(tmp_path / "bad.safetensors"))


@pytest.fixture
def decoder_only(tmp_path):
    t, spec = torch_like(np.random.default_rng(0))
    del spec["encoder"]
    w, s = write(tmp_path, t, spec)
    ck = str(tmp_path / "dec.h5")
    code, out = run_cli(["import", w, "--spec", s, "--out", ck])
    assert code == 0 and "encoder none" in out, out
    return ck, str(tmp_path / "r.h5")


@pytest.mark.parametrize("args", [["iwae", "--k", "2"], ["localopt", "--init", "encoder"],
                                  ["gaps", "--init", "encoder"], ["gaps", "--no-ais"]])
def test_without_encoder_commands_that_need_one_say_so(decoder_only, args):
    ck, res = decoder_only
    code, out = run_cli([args[0], ck, "--n", "2", "--out", res] + args[1:])
    assert code == 2 and len(out.strip().splitlines()) == 1 and "encoder" in out, out
    assert not os.path.exists(res)


def test_without_encoder_ais_localopt_and_gaps_run(decoder_only):
    ck, res = decoder_only
    ais = ["--chains", "2", "--steps", "3", "--leapfrog", "2", "--block", "2"]
    lo = ["--max-steps", "4", "--check-every", "2", "--samples", "2", "--final-samples", "3"]
    code, out = run_cli(["ais", ck, "--n", "2", "--out", res] + ais)
    assert code == 0, out
    code, out = run_cli(["localopt", ck, "--n", "2", "--out", res, "--block", "2"] + lo)
    assert code == 0, out
    code, out = run_cli(["bdmc", ck, "--n", "2", "--out", res] + ais)
    assert code == 0, out
    code, out = run_cli(["gaps", ck, "--n", "2", "--out", res, "--qstar", "ffg", "--format", "json",
                         "--localopt-block", "2"]
                        + ais + lo)
    assert code == 0, out
    rows = {r["key"]: r for r in json.loads(out[out.index("{"):out.rindex("}") + 1])["rows"]}
    assert rows["elbo"]["mean"] is None and rows["amortization"]["mean"] is None
    assert rows["logp"]["mean"] is not None and rows["approximation"]["mean"] is not None
