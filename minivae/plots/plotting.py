"""matplotlib behind the optional `plot` extra, with one clear line when it is missing."""
from ..errors import MinivaeError


def pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MinivaeError("plots need matplotlib: pip install -e '.[plot]'")
    return plt
