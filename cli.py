"""`minivae`: the command line. It only parses options, then calls minivae.commands (imported
inside each command, after --threads has sized the thread pools)."""
import functools
import math
import os
import signal
import sys

import click

from minivae.errors import MinivaeError, Terminated, clear_interrupt, on_signal, quiet_dropped_interrupts
from minivae.threads import THREAD_VARS


class Group(click.Group):
    """User mistakes (MinivaeError) end as one line on stderr and exit code 2, no traceback.
    SIGINT and SIGTERM end the run after its `finally` blocks: exit 130 or 143."""

    def invoke(self, ctx):
        try:                                # SIGTERM ends a run like Ctrl-C; neither can be swallowed
            previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:                                          # not the main thread
            previous = {}
        hook = sys.unraisablehook
        sys.unraisablehook = functools.partial(quiet_dropped_interrupts, default=hook)
        try:
            return super().invoke(ctx)
        except (MinivaeError, click.BadParameter) as e:
            # a bad option value, caught while parsing the command's options: one line as well
            message = e.format_message() if isinstance(e, click.BadParameter) else e
            click.echo(f"Error: {message}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt as e:      # a command may say what was saved and where it resumes
            saved = str(e) or "finished blocks are saved; run the same command again to resume"
            click.echo(f"Interrupted: {saved}.", err=True)
            ctx.exit(143 if isinstance(e, Terminated) else 130)
        finally:
            clear_interrupt()
            sys.unraisablehook = hook
            for s, handler in previous.items():
                signal.signal(s, handler)


class Real(click.FloatRange):
    """A finite float in a range. click.FloatRange lets nan through (every comparison with nan
    is false), and inf where no maximum is set."""

    name = "float"

    def convert(self, value, param, ctx):
        x = super().convert(value, param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value} is not a finite number.", param, ctx)
        return x


COUNT = click.IntRange(min=1)                    # sizes, counts, steps: at least one
NATURAL = click.IntRange(min=0)                  # layers, warm-up epochs, seeds (default_rng's range)
POSITIVE = Real(min=0, min_open=True)            # learning rates, step sizes


def check_localopt(max_steps, check_every):
    """q* stops at checks every --check-every steps: --max-steps must allow one."""
    if max_steps < check_every:
        raise click.BadParameter(f"{max_steps} is less than --check-every ({check_every}): "
                                 "q* needs at least one check", param_hint="'--max-steps'")


def set_threads(n):
    """Size the BLAS, OpenMP and Numba thread pools. They read these variables when they load,
    so this must run before numpy is imported (this file imports neither numpy nor the library
    at the top). Where numpy is already loaded (in-process callers), only Numba's count can still
    change, and the environment's NUMBA_NUM_THREADS is left alone (Numba refuses a new value
    once its pool is up); BLAS keeps its threads, said on stderr."""
    loaded = "numpy" in sys.modules
    for var in THREAD_VARS[:3] if loaded else THREAD_VARS:
        os.environ[var] = str(n)
    if "numba" in sys.modules:
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    if loaded:
        click.echo(f"--threads {n}: numpy is already loaded; its BLAS keeps its thread count", err=True)


@click.group(cls=Group, context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.version_option(package_name="minivae")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="threads of BLAS, OpenMP and Numba (OPENBLAS/OMP/MKL/NUMBA_NUM_THREADS) "
                   "[default: the environment's]; 1 on a machine shared with other work")
def main(threads):
    """Measure why a VAE's lower bound is loose: approximation vs amortization gaps."""
    if threads is not None:
        set_threads(threads)


IMPL_OPTION = click.option("--impl", type=click.Choice(["auto", "ref"]), default="auto",
                           help="auto: the fused paths where they apply; ref: the reference layer "
                                "code (the same numbers up to float rounding, slower)")


DATA_DIR_OPTION = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                               help="where datasets live (else $MINIVAE_DATA, else the user cache)")


def common(f):
    """--seed, --device, --dtype: every command takes them."""
    f = click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32")(f)
    f = click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu")(f)
    f = click.option("--seed", type=NATURAL, default=0, help="same seed, same numbers")(f)
    return f


@main.command()
@click.option("--q", "q", type=click.Choice(["ffg", "fullcov", "flow"]), default="ffg",
              help="posterior family")
@click.option("--dataset", default="mnist",
              help="mnist (embedded), mnist-idx, mnist-gray (not binarized), fashion (thresholded as the authors did), "
                   "fashion-stochastic, cifar10 (conv model, latent 32, discretized "
                   "logistic likelihood, warm-up 20 epochs, 4 flow steps unless given)")
@click.option("--arch", type=click.Choice(["mlp", "conv"]), default=None,
              help="mlp, or conv (paper Table 9, colour images) [default: conv for cifar10, else mlp]")
@DATA_DIR_OPTION
@click.option("--latent", type=COUNT, default=None, help="[default: 50; cifar10: 32]")
@click.option("--enc-hidden", type=COUNT, default=200, help="units per encoder hidden layer")
@click.option("--enc-layers", type=NATURAL, default=2, help="encoder hidden layers")
@click.option("--dec-hidden", type=COUNT, default=200, help="units per decoder hidden layer")
@click.option("--dec-layers", type=NATURAL, default=2, help="decoder hidden layers (paper Table 5: 0, 2, 4)")
@click.option("--act", type=click.Choice(["elu", "tanh"]), default="elu")
@click.option("--flow-steps", type=COUNT, default=None, help="[default: 2; cifar10: 4]")
@click.option("--objective", type=click.Choice(["elbo", "iwae"]), default="elbo")
@click.option("--k", type=COUNT, default=1, help="samples per datapoint in the objective")
@click.option("--batch", type=COUNT, default=100)
@click.option("--schedule", type=click.Choice(["burda", "plain"]), default=None,
              help="burda: 3^i epochs at lr 1e-3*10^(-i/7), i=0..7 (3280 epochs); plain: --epochs at --lr "
                   "[default: plain if --epochs is given, else burda]")
@click.option("--epochs", type=COUNT, default=None, help="epochs of the plain schedule")
@click.option("--lr", type=POSITIVE, default=1e-3, help="learning rate of the plain schedule")
@click.option("--adam-eps", type=POSITIVE, default=1e-8,
              help="Adam's epsilon (the authors' code, lxuechen/inference-suboptimality: 1e-4)")
@click.option("--warmup-epochs", type=NATURAL, default=None,
              help="entropy annealing epochs [default: 400 with burda, 0 with plain; cifar10: 20]")
@click.option("--no-warmup", is_flag=True, help="train without entropy annealing (paper Table 6)")
@click.option("--train-size", type=COUNT, default=None, help="use only the first N training images")
@click.option("--train-split", type=click.Choice(["train", "train+valid"]), default="train",
              help="images to train on; train+valid: the authors' code (MNIST: 60 000), valid then not held out")
@click.option("--out", type=click.Path(dir_okay=False), default="model.h5",
              help="checkpoint to write; one of this run is continued")
@click.option("--resume", type=click.Path(dir_okay=False), default=None,
              help="continue checkpoint CKPT in place (the same as rerunning its command with --out CKPT)")
@click.option("--extend", is_flag=True,
              help="let --epochs raise the epochs of an existing --out checkpoint (plain schedule)")
@click.option("--save-every", type=COUNT, default=1, help="write the checkpoint every N epochs")
@IMPL_OPTION
@common
@click.pass_context
def train(ctx, **opts):
    """Train a VAE (paper defaults: latent 50, 784-200-200-100 encoder, 50-200-200-784 decoder, ELU).
    The same command again on the same --out continues it; changed settings are refused."""
    from minivae import commands
    given = {name for name in opts if ctx.get_parameter_source(name) not in
             (click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)}
    commands.train(opts, given)


def where_to_run(f):
    """--workers, --scheduler: every per-datapoint command can run its blocks on Dask."""
    f = click.option("--scheduler", default=None, metavar="ADDRESS",
                     help="run blocks on an existing Dask cluster (tcp://host:8786); workers need minivae "
                          "and the checkpoint's contents are sent to them")(f)
    f = click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="run blocks on a local Dask cluster of N single-threaded processes "
                          "[default: in this process]")(f)
    return f


def checkpoint_command(f):
    """`minivae <function's name> CKPT`, where_to_run's options first: the per-datapoint commands."""
    return main.command()(click.argument("ckpt", type=str)(where_to_run(f)))


def first_n(f):
    """--n, --split: the datapoints a per-datapoint command measures."""
    f = click.option("--split", type=click.Choice(["train", "valid", "test"]), default="test")(f)
    f = click.option("--n", type=COUNT, default=1000, help="the first N datapoints of the split")(f)
    return f


def localopt_options(f):
    """The settings of local q* fitting (paper 6.4), shared by `localopt` and `gaps`."""
    for opt in reversed([
        click.option("--init", type=click.Choice(["prior", "encoder"]), default="prior",
                     help="start q* at N(0, I) (the paper) or at the trained encoder's q (faster)"),
        click.option("--max-steps", type=COUNT, default=20000, help="safety bound on Adam steps per datapoint"),
        click.option("--samples", type=COUNT, default=100, help="Monte Carlo samples per ELBO step"),
        click.option("--lr", type=POSITIVE, default=1e-3, help="Adam learning rate"),
        click.option("--check-every", type=COUNT, default=100,
                     help="compare the mean of the last N ELBOs with the best mean every N steps"),
        click.option("--patience", type=COUNT, default=10, help="stop after this many checks without improvement"),
        click.option("--final-samples", type=COUNT, default=5000, help="samples of the final L_VAE[q*]"),
        IMPL_OPTION,
    ]):
        f = opt(f)
    return f


@checkpoint_command
@click.option("--q", "q", type=click.Choice(["ffg", "flow", "fullcov"]), default="ffg",
              help="family of the local q*")
@first_n
@click.option("--out", type=click.Path(dir_okay=False), default="results.h5",
              help="results file (stage localopt_<q>); a rerun resumes after its last finished block")
@DATA_DIR_OPTION
@click.option("--block", type=COUNT, default=100,
              help="datapoints optimised together; results are saved after each block (resume)")
@localopt_options
@common
def localopt(**opts):
    """Fit q* per datapoint (its own ELBO, Adam, paper 6.4) and save L_VAE[q*] (stage localopt_<q>)."""
    from minivae import commands
    check_localopt(opts["max_steps"], opts["check_every"])
    commands.localopt(opts)


@main.command()
@click.argument("ckpt", type=str)
@click.option("--n", type=COUNT, default=64, help="number of samples (a square-ish grid)")
@click.option("--out", type=click.Path(dir_okay=False), default="samples.png", help="PNG to write")
@common
def sample(**opts):
    """Decode z ~ N(0, I) and save the decoder's means as an image grid (needs the plot extra)."""
    from minivae import commands
    commands.sample(opts)


def ais_options(f):
    """The AIS settings (paper 6.5 defaults), shared by `ais` and `bdmc`."""
    for opt in reversed([
        click.option("--chains", type=COUNT, default=100, help="AIS chains per datapoint"),
        click.option("--steps", type=COUNT, default=500,
                     help="annealing distributions beta_1..beta_T = 1 after the prior (T-1 HMC transitions)"),
        click.option("--leapfrog", type=COUNT, default=10, help="leapfrog steps per HMC trajectory"),
        click.option("--schedule", type=click.Choice(["sigmoid", "linear"]), default="sigmoid",
                     help="beta_t: sigmoid (Grosse et al. 2015, Wu et al. 2017) takes small steps near beta=0, "
                          "where p(x|z)^beta changes the target fastest, and near beta=1; linear: t/T"),
        click.option("--adapt", type=click.Choice(["per-chain", "tune-then-freeze"]), default="per-chain",
                     help="per-chain: each chain's step size follows its own acceptance during the run (as Wu "
                          "et al.; cheap, not exactly unbiased); tune-then-freeze: a tuning pass, then a "
                          "fresh pass with its per-transition step sizes frozen (unbiased, twice the cost)"),
        click.option("--target-accept", type=Real(0, 1, min_open=True, max_open=True), default=0.65,
                     help="step sizes move as log s += 0.05 (accepted - target)"),
        click.option("--step0", type=POSITIVE, default=0.1, help="first leapfrog step size of every chain"),
        click.option("--block", type=COUNT, default=10,
                     help="datapoints per block (block x chains rows per decoder call); results are saved "
                          "after each block and a rerun with the same --out resumes"),
    ]):
        f = opt(f)
    return f


@checkpoint_command
@click.option("--k", type=COUNT, default=5000, help="samples of q per datapoint")
@first_n
@click.option("--chunk", type=COUNT, default=None,
              help="rows (datapoints x samples) per decoder call [default: 10000, conv models 1000]; "
                   "memory stays near chunk x data_dim x 6 values for an MLP decoder (about 190 MB at "
                   "10000 x 784 in float32) whatever --k is")
@click.option("--out", type=click.Path(dir_okay=False), default="results.h5", help="results file (stage iwae)")
@DATA_DIR_OPTION
@common
def iwae(**opts):
    """L_VAE[q] and L_IWAE[q] per datapoint from k samples of the model's own q (stage iwae)."""
    from minivae import commands
    commands.iwae(opts)


@checkpoint_command
@first_n
@click.option("--out", type=click.Path(dir_okay=False), default="results.h5",
              help="results file (stage ais); a rerun resumes after its last finished block")
@DATA_DIR_OPTION
@ais_options
@common
def ais(**opts):
    """log p(x) >= AIS from the prior with HMC transitions (paper 6.5; stage ais)."""
    from minivae import commands
    commands.ais(opts)


@checkpoint_command
@click.option("--n", type=COUNT, default=100, help="datapoints simulated from the model")
@click.option("--out", type=click.Path(dir_okay=False), default="results.h5",
              help="results file (stage bdmc); a rerun resumes after its last finished block")
@ais_options
@common
def bdmc(**opts):
    """Sandwich log p(x) of data simulated from the model: forward AIS (lower) and reverse AIS
    from the exact posterior sample (upper), Grosse et al. 2015 (stage bdmc)."""
    from minivae import commands
    commands.bdmc(opts)


@checkpoint_command
@first_n
@click.option("--out", type=click.Path(dir_okay=False), default="results.h5",
              help="results file: stages iwae, ais, localopt_<q> are reused from it or run and saved")
@click.option("--format", "format", type=click.Choice(["table", "markdown", "json", "csv"]), default="table")
@DATA_DIR_OPTION
@click.option("--k", type=COUNT, default=5000, help="L_VAE[q] and L_IWAE[q]: samples of q per datapoint")
@click.option("--chunk", type=COUNT, default=None,
              help="L_VAE/L_IWAE: rows (datapoints x samples) per decoder call [default: 10000, conv models 1000]")
@ais_options
@click.option("--no-ais", is_flag=True, help="skip AIS: log p^(x) from L_IWAE[q] alone")
@click.option("--qstar", default="ffg,flow",
              help="families of the local q* to fit (the trained family is always added)")
@click.option("--localopt-block", type=COUNT, default=100, help="q*: datapoints optimised together")
@localopt_options
@common
def gaps(**opts):
    """The inference-gap table (paper Table 2): log p^(x) = max(IWAE, AIS) per datapoint, L[q*_Flow],
    L[q*_FFG], L[q], approximation, amortization, inference; --block is AIS's block."""
    from minivae import commands
    check_localopt(opts["max_steps"], opts["check_every"])
    commands.gaps(opts)


@main.command()
@click.argument("experiment", type=click.Choice(["table2", "table3", "table4", "table5", "table6",
                                                 "table10", "fig2", "fig3"]))
@click.option("--dataset", type=click.Choice(["mnist", "mnist-gray", "fashion", "cifar10"]), default="mnist",
              help="mnist-gray: grey levels, as the authors' loader reads MNIST; "
                   "cifar10: table2 only (the conv model), as in the paper")
@click.option("--budget", type=click.Choice(["smoke", "cpu", "paper"]), default="cpu",
              help="smoke: minutes, tiny; cpu: a few hours on 2 cores; paper: the paper's settings")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="folder for models, results, figures and report.md [default: runs/EXPERIMENT-DATASET-BUDGET]")
@click.option("--seed", type=NATURAL, default=0, help="same seed, same numbers")
@click.option("--split", type=click.Choice(["train", "test"]), default="train",
              help="tables: evaluate the first n datapoints of this split (train: the authors' protocol)")
@click.option("--only", default="", metavar="NAMES",
              help="tables: train and evaluate only these of the experiment's models (comma-separated, "
                   "e.g. ffg); a later run without --only reuses them [default: all]")
@where_to_run
def reproduce(experiment, dataset, budget, out, seed, split, only, workers, scheduler):
    """Run one of the paper's experiments and write DIR/report.md beside the paper's numbers.
    Reruns reuse finished models and result stages. With --workers/--scheduler (tables), the
    models train at once on the cluster, then every evaluation stage runs there."""
    from minivae import commands
    commands.reproduce(experiment, dataset, budget, out, seed, split, workers, scheduler, only)


@main.command()
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("--format", "format", type=click.Choice(["table", "markdown", "json", "csv"]), default="table")
@click.option("--trained", type=click.Choice(["ffg", "flow", "fullcov"]), default=None,
              help="the family the model was trained with [default: the file's iwae stage's]")
def summary(results, format, trained):
    """The gap table of a results file as it stands, while its run goes on or after it stopped:
    over the datapoints that every stage there (iwae, ais, localopt_<q>) holds so far."""
    from minivae import commands
    commands.summary(results, format, trained)


# -- bring your own VAE (issue 16): import weights trained elsewhere, export a model -----------
@main.command("import")
@click.argument("weights", type=str)
@click.option("--spec", "spec", type=str, required=True,
              help="JSON (or .toml) naming each layer's weight and bias tensors, the layout "
                   "(pytorch or minivae), activation, likelihood, posterior; see README 'Your own model'")
@click.option("--out", type=click.Path(dir_okay=False), default="model.h5", help="checkpoint to write")
def import_(weights, spec, out):
    """Turn WEIGHTS (.safetensors or .npz) of an MLP VAE trained elsewhere into a minivae checkpoint."""
    from minivae import commands
    click.echo(commands.import_model(weights, spec, out))


@main.command("export")
@click.argument("ckpt", type=str)
@click.option("--out", type=click.Path(dir_okay=False), default="model.safetensors",
              help="weights to write (.safetensors or .npz); the spec goes beside it as NAME.spec.json")
@click.option("--layout", type=click.Choice(["pytorch", "minivae"]), default="pytorch",
              help="weights as (out, in) like nn.Linear, or minivae's (in, out)")
def export(ckpt, out, layout):
    """Write a minivae MLP checkpoint as safetensors plus a spec that `minivae import` reads back exactly."""
    from minivae import commands
    click.echo(commands.export(ckpt, out, layout))


@main.command()
def models():
    """List the models shipped with minivae (use one as CKPT: paper:NAME), with their provenance."""
    from minivae import commands
    click.echo(commands.models())


if __name__ == "__main__":
    sys.exit(main())
