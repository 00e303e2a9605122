"""Pure cnnjax vs flax.nnx vs flax.linen on a batch of real test images: logits, loss, gradients.

    python -m experiments.compare_flax [--data-dir DIR] [--batch 256] [--seed 0]

Prints one row per framework and quantity (max |flax - pure|, the tolerance, PASS/FAIL) and
exits 1 if any row fails. Expect every row to PASS; on CPU the diffs are often exactly 0.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp

from cnnjax import data, flax_models, models


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-dir", help="directory of the IDX files (default: auto)")
    parser.add_argument("--batch", type=int, default=256, help="test images to compare on")
    parser.add_argument("--seed", type=int, default=0, help="seed of the params init")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")

    try:
        data_dir = args.data_dir or data.default_data_dir()
        images_NHWC, labels_N = data.load_split(data_dir, "test")
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    x_NHWC = jnp.asarray(data.normalize(images_NHWC[: args.batch]))
    labels_N = jnp.asarray(labels_N[: args.batch])
    init_key = jax.random.key(args.seed)
    params = models.init(init_key, models.REFERENCE_CNN, models.REFERENCE_INPUT_SHAPE)
    rows = flax_models.parity_report(params, models.REFERENCE_CNN, x_NHWC, labels_N)

    device = jax.devices()[0]
    print(f"data: {data_dir} (test), batch {len(labels_N)}, seed {args.seed}, device {device}")
    print(f"{'framework':<10} {'quantity':<20} {'max |diff|':>11} {'tolerance':>11}  result")
    for row in rows:
        result = "PASS" if row.passed else "FAIL"
        print(
            f"{row.framework:<10} {row.quantity:<20} {row.max_abs_diff:>11.3e} "
            f"{row.tolerance:>11.3e}  {result}"
        )
    failed = [row for row in rows if not row.passed]
    print(f"{len(rows) - len(failed)}/{len(rows)} passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
