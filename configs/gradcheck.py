"""Check every hand-derived gradient against jax.grad (float32, float64) and finite differences.

    python -m experiments.gradcheck --config configs/gradcheck.py [--config.num_random_specs=40]

Expect: 2272 checks, 0 failed (worst float32 error 7e-5 of scale, BatchNorm's scale in train
mode; float64 ~4e-13; finite differences ~8e-8); about 9 minutes on 2 CPU cores shared with
other work. The table has one row per check and dtype: the worst of its cases.
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_random_specs = 20  # random networks per dtype, besides REFERENCE_CNN
    config.layer_cases = 8  # random cases per layer kind and dtype
    config.dtypes = ("float32", "float64")
    config.all_rows = False  # print every case instead of the worst per check
    return config
