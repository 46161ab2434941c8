"""`minivae`: the command line. It only parses options and calls the library."""
import sys

import click

from minivae.errors import MinivaeError


class Group(click.Group):
    """User mistakes (MinivaeError) end as one line on stderr and exit code 2, no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MinivaeError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("Interrupted: finished blocks are saved; run the same command again to resume.",
                       err=True)
            ctx.exit(130)


@click.group(cls=Group, context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.version_option(package_name="minivae")
def main():
    """Measure why a VAE's lower bound is loose: approximation vs amortization gaps."""


def common(f):
    """--seed, --device, --dtype: every command takes them."""
    f = click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32")(f)
    f = click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu")(f)
    f = click.option("--seed", type=int, default=0, help="same seed, same numbers")(f)
    return f


@main.command()
@click.option("--q", "q", type=click.Choice(["ffg", "fullcov", "flow"]), default="ffg",
              help="posterior family")
@click.option("--dataset", default="mnist", help="mnist (embedded), mnist-idx, fashion")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="where datasets live (else $MINIVAE_DATA, else the user cache)")
@click.option("--latent", type=int, default=50)
@click.option("--enc-hidden", type=int, default=200, help="units per encoder hidden layer")
@click.option("--enc-layers", type=int, default=2, help="encoder hidden layers")
@click.option("--dec-hidden", type=int, default=200, help="units per decoder hidden layer")
@click.option("--dec-layers", type=int, default=2, help="decoder hidden layers (paper Table 5: 0, 2, 4)")
@click.option("--act", type=click.Choice(["elu", "tanh"]), default="elu")
@click.option("--flow-steps", type=int, default=2)
@click.option("--objective", type=click.Choice(["elbo", "iwae"]), default="elbo")
@click.option("--k", type=int, default=1, help="samples per datapoint in the objective")
@click.option("--batch", type=int, default=100)
@click.option("--schedule", type=click.Choice(["burda", "plain"]), default=None,
              help="burda: 3^i epochs at lr 1e-3*10^(-i/7), i=0..7 (3280 epochs); plain: --epochs at --lr "
                   "[default: plain if --epochs is given, else burda]")
@click.option("--epochs", type=int, default=None, help="epochs of the plain schedule")
@click.option("--lr", type=float, default=1e-3, help="learning rate of the plain schedule")
@click.option("--warmup-epochs", type=int, default=None,
              help="entropy annealing epochs [default: 400 with burda, 0 with plain]")
@click.option("--no-warmup", is_flag=True, help="train without entropy annealing (paper Table 6)")
@click.option("--train-size", type=int, default=None, help="use only the first N training images")
@click.option("--out", type=click.Path(dir_okay=False), default="model.h5", help="checkpoint to write")
@click.option("--resume", type=click.Path(dir_okay=False), default=None,
              help="continue a checkpoint where it stopped (its settings win)")
@click.option("--save-every", type=int, default=1, help="write the checkpoint every N epochs")
@common
def train(**opts):
    """Train a VAE (paper defaults: latent 50, 784-200-200-100 encoder, 50-200-200-784 decoder, ELU)."""
    from minivae import train as training
    training.run_from_cli(opts)


if __name__ == "__main__":
    sys.exit(main())
