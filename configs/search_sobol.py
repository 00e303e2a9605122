"""configs/search_tpe.py's space and budget on a scrambled Sobol sequence: 16 members drawn at
once, so they shard like a grid's.

    python -m experiments.sweep --config configs/search_sobol.py --workdir runs/search_sobol
"""

from cnnjax.sweeps import search
from configs import search_tpe

get_config = search_tpe.get_config


def get_sweep():
    return search.Search(search_tpe.SPACE, sampler="sobol", members=16, seed=0)
