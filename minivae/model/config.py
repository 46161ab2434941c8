"""One config dataclass: stored in every checkpoint, rebuilt from it on load."""
import dataclasses
import json
from dataclasses import dataclass

from ..errors import MinivaeError


@dataclass
class Config:
    dataset: str = "mnist"
    data_dim: int = 784
    likelihood: str = "bernoulli"  # bernoulli (binarized images) | gaussian (linear-Gaussian tests)
                                   # | logistic (discretized, 256 levels: CIFAR-10)
    arch: str = "mlp"              # mlp | conv (paper Table 9, CIFAR-10; see convmodel.py)
    obs_std: float = 1.0           # std of the Gaussian likelihood
    q: str = "ffg"                 # ffg | fullcov | flow
    latent: int = 50
    enc_hidden: int = 200
    enc_layers: int = 2            # hidden layers of the encoder (0: a single linear map)
    dec_hidden: int = 200
    dec_layers: int = 2            # hidden layers of the decoder (paper Table 5: 0, 2, 4)
    act: str = "elu"
    flow_steps: int = 2
    flow_hidden: int = 100
    encoder: bool = True           # False: imported decoder only (minivae import); no q(z|x)
    # training
    objective: str = "elbo"        # elbo | iwae
    k: int = 1                     # samples per datapoint for the training objective
    batch: int = 100
    train_split: str = "train"     # train | train+valid (the authors' code: 60 000 MNIST images)
    train_size: int = 0            # use only the first N training images (0: all)
    schedule: str = "burda"        # burda | plain
    epochs: int = 3280             # plain schedule only; burda fixes 3280
    lr: float = 1e-3               # plain schedule only
    adam_eps: float = 1e-8         # Adam's epsilon (Kingma & Ba's); the authors' code (lxuechen) used 1e-4
    warmup_epochs: int = 400       # entropy annealing lambda: 0 -> 1 over these epochs
    freeze: str = ""               # comma-separated key prefixes not trained (e.g. "dec": Table 4)
    seed: int = 0
    dtype: str = "float32"

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text):
        d = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise MinivaeError(f"checkpoint config has unknown fields {sorted(unknown)}: "
                               "it was written by a newer minivae; upgrade minivae")
        return cls(**d)

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)
