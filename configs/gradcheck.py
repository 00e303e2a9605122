"""Check every hand-derived gradient against jax.grad (float32, float64) and finite differences.

    python -m experiments.gradcheck --config configs/gradcheck.py [--config.num_random_specs=40]

Expect: 1162 checks, 0 failed (worst float32 error ~3e-6 of scale, float64 ~1e-14, finite
differences ~2e-7), about 90 s on 2 CPU cores. The table has one row per check and dtype: the
worst of its cases.
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_random_specs = 20  # random networks per dtype, besides REFERENCE_CNN
    config.layer_cases = 8  # random cases per layer rule and dtype
    config.dtypes = ("float32", "float64")
    config.all_rows = False  # print every case instead of the worst per check
    return config
