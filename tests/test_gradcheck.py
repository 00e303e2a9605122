"""cnnjax.gradcheck: the real rules pass, and every checker catches a planted wrong rule."""

import dataclasses
import functools
import itertools
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import backprop, gradcheck, grads, layers, losses, models, ops
from cnnjax.gradcheck import engine
from tests.builders import REPO

# Fixed cases that give each planted bug something to get wrong: an asymmetric kernel with a
# stride of 2, a padded avg pool without the padding in its count, overlapping pool windows.
CONV, CONV_SHAPE = models.Conv(3, (3, 2), stride=2, padding="SAME"), (7, 6, 2)
POOL = dict(window=(3, 2), stride=(2, 1), padding=((1, 1), (1, 0)))
POOL_SHAPE = (6, 5, 2)
SMOOTHED_CASE = dict(shape=(3, 5), target="smoothed", label_smoothing=0.2)
SMALL_SPEC = (
    models.Conv(3, 3, stride=2, padding="SAME"),
    models.ReLU(),
    models.MaxPool(2, stride=1),
    models.Flatten(),
    models.Dense(4),
)


def failed(rows) -> set[str]:
    return {row.check for row in rows if not row.passed}


def rng():
    return np.random.default_rng(0)


# --------------------------------------------------------------------------- the real rules pass


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_real_layer_rules_pass(dtype):
    rngs = (np.random.default_rng([1, i]) for i in range(100))
    rows = gradcheck.layer_checks(rngs, dtype, num_cases=1)
    assert rows and not failed(rows)
    assert any(row.check.endswith("vs fd") for row in rows) == (dtype == "float64")
    checks = {row.check for row in rows}
    assert {"MaxPool/dx vs autodiff, integers", "ReLU/dx vs autodiff, plateaus"} <= checks
    # every kind of cnnjax is checked (a test's own kinds may be registered in this process
    # too); a kind's own batched rule besides its vmapped one
    own = {n for n, kind in layers.KINDS.items() if kind.__module__.startswith("cnnjax.")}
    assert {row.check.split("/")[0] for row in rows} >= own
    assert "Conv/kernel batched vs autodiff" in checks


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_real_network_rules_pass(dtype):
    spec, shape = gradcheck.random_spec(rng())
    rows = gradcheck.check_network(spec, shape, rng(), dtype, label_smoothing=0.1)
    rows += gradcheck.check_network(SMALL_SPEC, (9, 8, 2), rng(), dtype)
    assert not failed(rows)
    assert "net/conv1/kernel custom_vjp vs autodiff" in {row.check for row in rows}


def test_reference_cnn_passes_in_float64():
    shape = models.REFERENCE_INPUT_SHAPE
    rows = gradcheck.check_network(models.REFERENCE_CNN, shape, rng(), "float64", batch=2)
    assert not failed(rows)
    assert "net/dense1/kernel hand vs fd" in {row.check for row in rows}


def test_random_specs_are_valid_and_varied():
    specs = [gradcheck.random_spec(np.random.default_rng(i)) for i in range(30)]
    layers = [layer for spec, shape in specs for layer in spec]
    for spec, shape in specs:
        models.output_shapes(spec, shape)  # raises if invalid
        assert 8 <= min(shape[:2]) and max(shape[:2]) <= 16 and 1 <= shape[2] <= 3
    assert {models.MaxPool, models.AvgPool} <= {type(layer) for layer in layers}
    paddings = {str(layer.padding)[:2] for layer in layers if hasattr(layer, "padding")}
    assert {"VA", "SA", "(("} <= paddings
    assert any(max(layer.stride) == 3 for layer in layers if isinstance(layer, models.Conv))


def test_conv_gradient_that_aborts_xlas_simplifier_is_checked():
    # jax 0.10.2: jax.jit(jax.grad) of this conv aborts the process in XLA's algebraic
    # simplifier; gradcheck compiles without that pass (see gradcheck.engine._COMPILE).
    conv = dict(stride=(2, 1), padding=((1, 1), (1, 1)))
    x, w, b = (rng().standard_normal(shape) for shape in ((4, 2, 1), (2, 4, 1, 1), (1,)))
    rows = gradcheck.check_vjp(
        functools.partial(ops.conv2d, **conv),
        lambda x, w, b, dy: grads.conv2d_vjp(x, w, dy, **conv),
        *(x, w, b),
        dtypes="float64",
    )
    assert rows and not failed(rows)


def test_checks_compile_a_broadcast_over_a_size_one_axis_correctly():
    # jax 0.10.2, CPU: with the simplifier off, XLA's YNNPACK fusions computed this reduction
    # wrong (off by ~40), so gradcheck compiles without them too (see gradcheck.engine._COMPILE).
    r = rng()
    x, s = r.standard_normal((36, 3, 5, 14, 1)), r.standard_normal((36, 1))

    def f(x, s):
        return jnp.sum(x * s[:, None, None, None, :] - 0.25, axis=(2, 3))

    want = np.sum(x * s[:, None, None, None, :] - 0.25, axis=(2, 3))
    got = np.asarray(engine._run(f, x, s))
    assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))  # float32 rounding


def test_one_channel_batchnorm_in_a_residual_passes_vs_fd():
    # FD of this network (a one-channel BatchNorm under the FD points' vmap) met that
    # miscompilation: the conv kernel's FD was wrong while autodiff agreed with the hand rule.
    body = (models.Conv(1, (3, 2), (3, 1), "SAME", use_bias=False), layers.BatchNorm(0.9))
    spec = (layers.Residual((*body, models.ReLU())), layers.GlobalAvgPool(), models.Dense(2))
    rows = gradcheck.check_network(spec, (15, 14, 3), np.random.default_rng(3), "float64")
    assert "net/residual1/conv1/kernel hand vs fd" in {row.check for row in rows}
    assert not failed(rows)


def test_fd_uses_a_smaller_step_when_the_larger_straddles_a_kink():
    def f(a):  # kink at t = 3e-7: inside h = 1e-6, outside h = 1e-7
        return jnp.sum(ops.relu(a - 3e-7))

    with jax.enable_x64(True):
        fd = np.asarray(engine._fd(f, jnp.zeros(1), jnp.ones((1, 1))))
    big, small = gradcheck.FD_STEPS.index(1e-6), gradcheck.FD_STEPS.index(1e-7)
    assert abs(fd[big, 0, 0] - 0.35) < 1e-6 and fd[small, 0, 0] == fd[small, 1, 0] == 0.0
    v_D = np.ones((1, 1))
    assert engine._fd_row("kink", "", v_D, np.zeros(1), fd).passed  # f'(0) = 0
    assert not engine._fd_row("kink", "", v_D, np.ones(1), fd).passed  # a wrong rule still fails


def test_float64_checks_leave_x64_disabled():
    gradcheck.check_layer(models.Dense(3), (2,), dtypes="float64")
    assert jnp.zeros(1).dtype == jnp.float32


# --------------------------------------------------------------------------- planted conv bugs
# A wrong rule is a layer kind of its own, as a researcher's would be: the real kind with its vjp
# replaced, and its batched form the vmapped vjp (Layer.vjp_batch), so only the planted rule is
# checked. Rows are named by the kind: "ConvUnflipped/dx vs autodiff".


@dataclasses.dataclass(frozen=True)
class ConvUnflipped(models.Conv):
    """dx from the kernel as stored, not flipped (the rule flips what it is given)."""

    vjp_batch = layers.Layer.vjp_batch

    def vjp(self, p, x, dy, ctx):
        dx, _ = super().vjp({**p, "kernel": jnp.flip(p["kernel"], (0, 1))}, x, dy, ctx)
        return dx, super().vjp(p, x, dy, ctx)[1]


@dataclasses.dataclass(frozen=True)
class ConvUndilated(models.Conv):
    """The rule with output `which` (0: dx, 1: dkernel) from the error not dilated by the
    stride: the error's entries kept side by side (zero-padded at the end to the stride-1 output
    size), then conv2d_vjp at stride 1 on the same explicit padding."""

    which: int = 0
    vjp_batch = layers.Layer.vjp_batch

    def vjp(self, p, x, dy, ctx):
        w, stride = p["kernel"], ops.as_pair(self.stride, "stride")
        pads = ops.explicit_padding(x.shape[:2], w.shape[:2], stride, self.padding)
        h1, w1, _ = ops.conv2d_shape(x.shape, w.shape, stride=1, padding=pads)
        dy_undilated = jnp.pad(dy, ((0, h1 - dy.shape[0]), (0, w1 - dy.shape[1]), (0, 0)))
        right = list(grads.conv2d_vjp(x, w, dy, stride=stride, padding=self.padding))
        right[self.which] = grads.conv2d_vjp(x, w, dy_undilated, stride=1, padding=pads)[self.which]
        dx, dw, db = right
        return dx, {"kernel": dw, "bias": db}


def conv_rows(kind=models.Conv, dtype="float64", **fields):
    layer = kind(CONV.features, CONV.kernel_size, CONV.stride, CONV.padding, **fields)
    return gradcheck.check_layer(layer, CONV_SHAPE, dtypes=dtype)


def test_real_conv_rule_passes_on_the_planted_cases():
    assert not failed(conv_rows())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_unflipped_kernel_is_caught(dtype):
    assert "ConvUnflipped/dx vs autodiff" in failed(conv_rows(ConvUnflipped, dtype))


def test_finite_differences_alone_catch_an_unflipped_kernel():
    fd_failed = {check for check in failed(conv_rows(ConvUnflipped)) if check.endswith("vs fd")}
    assert fd_failed == {"ConvUnflipped/dx vs fd"}


def test_error_not_dilated_by_the_stride_is_caught():
    rows = conv_rows(ConvUndilated, which=0)
    assert failed(rows) == {"ConvUndilated/dx vs autodiff", "ConvUndilated/dx vs fd"}


def test_dkernel_from_the_undilated_error_is_caught():
    rows = conv_rows(ConvUndilated, which=1)
    assert failed(rows) == {"ConvUndilated/kernel vs autodiff", "ConvUndilated/kernel vs fd"}


# --------------------------------------------------------------------------- planted pool bugs


def max_pool_tie_policy(policy: str):
    """max_pool_vjp written out window by window, giving a tied maximum's error to the "first"
    or "last" arg-max in row-major order, or "split" equally among the ties."""

    def rule(x_HWC, dy_HWC, *, window, stride=None, padding="VALID"):
        (kh, kw), (sh, sw) = ops.as_pair(window, "w"), ops.as_pair(stride or window, "s")
        pads = ops.explicit_padding(x_HWC.shape[:2], (kh, kw), (sh, sw), padding)
        xpad = jnp.pad(x_HWC, (*pads, (0, 0)), constant_values=-jnp.inf)
        dxpad = jnp.zeros(xpad.shape, x_HWC.dtype)
        for i in range(dy_HWC.shape[0]):
            for j in range(dy_HWC.shape[1]):
                win_KC = xpad[i * sh : i * sh + kh, j * sw : j * sw + kw].reshape(kh * kw, -1)
                is_max = (win_KC == win_KC.max(axis=0)).astype(x_HWC.dtype)
                if policy == "split":
                    share = is_max / is_max.sum(axis=0)
                else:
                    order = is_max if policy == "first" else is_max[::-1]
                    k = jnp.argmax(order, axis=0)
                    k = k if policy == "first" else kh * kw - 1 - k
                    share = jax.nn.one_hot(k, kh * kw, axis=0, dtype=x_HWC.dtype)
                patch = (share * dy_HWC[i, j]).reshape(kh, kw, -1)
                dxpad = dxpad.at[i * sh : i * sh + kh, j * sw : j * sw + kw].add(patch)
        (top, _), (left, _) = pads
        return dxpad[top : top + x_HWC.shape[0], left : left + x_HWC.shape[1]]

    return rule


@dataclasses.dataclass(frozen=True)
class MaxPoolTies(models.MaxPool):
    """Max-pooling whose rule gives a tie to the `policy` arg-max (max_pool_tie_policy)."""

    policy: str = "first"
    vjp_batch = layers.Layer.vjp_batch

    def vjp(self, p, x, dy, ctx):
        rule = max_pool_tie_policy(self.policy)
        return rule(x, dy, window=self.window, stride=self.stride, padding=self.padding), {}


def max_pool_rows(policy, dtype="float64"):
    layer = MaxPoolTies(**POOL, policy=policy)
    return [
        row
        for data in (None, *gradcheck.TIE_KINDS)
        for row in gradcheck.check_layer(layer, POOL_SHAPE, dtypes=dtype, data=data)
    ]


def test_written_out_max_pool_with_the_first_arg_max_passes():
    assert not failed(max_pool_rows("first"))


@pytest.mark.parametrize("policy", ["last", "split"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_other_tie_policies_are_caught_only_by_tie_heavy_inputs(policy, dtype):
    rows = max_pool_rows(policy, dtype)
    assert failed(rows) == {f"MaxPoolTies/dx vs autodiff, {kind}" for kind in gradcheck.TIE_KINDS}


@dataclasses.dataclass(frozen=True)
class MaxPoolLastInApply(models.MaxPool):
    """A fast form whose selects let a later equal value take over (>=, not >): the same values,
    but jax.grad of apply hands a tie's error to the last arg-max."""

    def apply(self, p, x, ctx):
        (kh, kw), (h, w, c) = ops.as_pair(self.window, "window"), x.shape
        x5 = x[: h // kh * kh, : w // kw * kw].reshape(h // kh, kh, w // kw, kw, c)
        y = x5[:, 0, :, 0]
        for k in range(1, kh * kw):
            tap = x5[:, k // kw, :, k % kw]
            y = jnp.where(tap >= y, tap, y)
        return y


def test_max_pool_checks_jax_grad_of_its_fast_form_against_reduce_window():
    real = [
        row
        for data in (None, *gradcheck.TIE_KINDS)
        for row in gradcheck.check_layer(models.MaxPool(2), (6, 5, 2), dtypes="float64", data=data)
    ]
    assert "MaxPool/dx jax.grad of apply vs autodiff, plateaus" in {row.check for row in real}
    assert not failed(real)
    planted = MaxPoolLastInApply(2)
    rows = [
        row
        for data in (None, *gradcheck.TIE_KINDS)
        for row in gradcheck.check_layer(planted, (12, 11, 3), dtypes="float64", data=data)
    ]
    assert failed(rows) == {
        f"MaxPoolLastInApply/dx jax.grad of apply vs autodiff, {kind}"
        for kind in gradcheck.TIE_KINDS
    }


def test_max_pool_gives_the_same_values_in_train_and_eval_mode():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(9, 8, 3)), jnp.float32)
    layer = models.MaxPool(2)
    train = layer.apply({}, x, layers.Context(True, None, {}))
    np.testing.assert_array_equal(train, layer.apply({}, x, layers.EVAL))
    np.testing.assert_array_equal(train, layer.autodiff_reference({}, x, layers.EVAL))


def test_a_network_with_max_pool_checks_jax_grad_of_apply_too():
    rows = gradcheck.check_network(
        (*models.REFERENCE_CNN[:3], models.Flatten(), models.Dense(3)), (8, 8, 1), rng(), "float64"
    )
    names = {row.check for row in rows}
    assert "net/conv1/kernel jax.grad of apply vs autodiff" in names
    assert not failed(rows)


@dataclasses.dataclass(frozen=True)
class AvgPoolOverTheWindow(models.AvgPool):
    """Divides by the window's size even where the layer counts only its real inputs."""

    vjp_batch = layers.Layer.vjp_batch

    def vjp(self, p, x, dy, ctx):
        pool = dict(window=self.window, stride=self.stride, padding=self.padding)
        return grads.avg_pool_vjp(x, dy, **pool, count_include_pad=True), {}


def test_avg_pool_dividing_by_the_window_size_is_caught():
    real = models.AvgPool(**POOL, count_include_pad=False)
    assert not failed(gradcheck.check_layer(real, POOL_SHAPE, dtypes="float64"))
    planted = AvgPoolOverTheWindow(**POOL, count_include_pad=False)
    rows = gradcheck.check_layer(planted, POOL_SHAPE, dtypes="float64")
    assert failed(rows) == {"AvgPoolOverTheWindow/dx vs autodiff", "AvgPoolOverTheWindow/dx vs fd"}


# --------------------------------------------------------------------------- other planted bugs


@dataclasses.dataclass(frozen=True)
class ReLUOneAtZero(models.ReLU):
    def vjp(self, p, x, dy, ctx):
        return jnp.where(x >= 0, dy, jnp.zeros_like(dy)), {}


@dataclasses.dataclass(frozen=True)
class ReLUInFloat32(models.ReLU):
    def vjp(self, p, x, dy, ctx):
        return grads.relu_vjp(x, dy).astype(jnp.float32), {}  # integers: exact in float32 too


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_relu_gradient_one_at_zero_is_caught_on_plateaus(dtype):
    rows = [
        row
        for data in (None, *gradcheck.TIE_KINDS)
        for row in gradcheck.check_layer(ReLUOneAtZero(), (4, 5, 3), dtypes=dtype, data=data)
    ]
    assert failed(rows) == {f"ReLUOneAtZero/dx vs autodiff, {k}" for k in gradcheck.TIE_KINDS}


def test_rule_that_changes_the_dtype_is_caught_even_with_exact_values():
    rows = gradcheck.check_layer(ReLUInFloat32(), (3, 4, 2), dtypes="float64", data="integers")
    assert failed(rows) == {"ReLUInFloat32/dx vs autodiff, integers"}


@dataclasses.dataclass(frozen=True)
class DenseTransposed(models.Dense):
    """dx from the kernel untransposed, dw as outer(dy, x): square, so the shapes still fit."""

    vjp_batch = layers.Layer.vjp_batch

    def vjp(self, p, x_I, dy_O, ctx):
        w_IO = p["kernel"]
        return w_IO.T @ dy_O, {"kernel": jnp.outer(dy_O, x_I), "bias": dy_O}


def test_dense_with_the_kernel_transposed_is_caught():
    assert not failed(gradcheck.check_layer(models.Dense(4), (4,), dtypes="float64"))
    rows = gradcheck.check_layer(DenseTransposed(4), (4,), dtypes="float64")
    assert failed(rows) == {
        f"DenseTransposed/{n} vs {ref}" for n in ("dx", "kernel") for ref in ("autodiff", "fd")
    }


def test_cross_entropy_rule_ignoring_label_smoothing_is_caught():
    def rule(logits_K, labels, *, label_smoothing=0.0):
        return losses.softmax(logits_K) - jax.nn.one_hot(
            labels, logits_K.shape[-1], dtype=logits_K.dtype
        )

    int_case = dict(shape=(3, 5), target="int")
    assert not failed(gradcheck.check_cross_entropy(int_case, rng(), "float64", rule=rule))
    rows = gradcheck.check_cross_entropy(SMOOTHED_CASE, rng(), "float64", rule=rule)
    assert failed(rows) == {
        f"cross_entropy[smoothed]/dlogits vs {ref}" for ref in ("autodiff", "fd")
    }


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_network_gradient_not_divided_by_the_batch_size_is_caught(dtype):
    def value_and_grad(params, x_NHWC, labels_N, spec, **kwargs):
        loss, g = backprop.value_and_grad(params, x_NHWC, labels_N, spec, **kwargs)
        return loss, jax.tree.map(lambda leaf: leaf * x_NHWC.shape[0], g)

    rows = gradcheck.check_network(
        SMALL_SPEC, (9, 8, 2), rng(), dtype, value_and_grad=value_and_grad
    )
    leaves = [f"net/{name}/{k}" for name in ("conv1", "dense1") for k in ("kernel", "bias")]
    refs = ("autodiff", "fd") if dtype == "float64" else ("autodiff",)
    assert failed(rows) == {f"{leaf} hand vs {ref}" for leaf in leaves for ref in refs}


@dataclasses.dataclass(frozen=True)
class ReLUPassingEveryError(models.ReLU):
    def vjp(self, p, x, dy, ctx):
        return dy, {}


def test_network_custom_vjp_twin_with_a_wrong_rule_is_caught():
    def fns(layer, p, x, ctx):  # the twins, but ReLU's rule passes every error through
        if isinstance(layer, models.ReLU):
            return models.HAND_DERIVED(ReLUPassingEveryError(), p, x, ctx)
        return models.HAND_DERIVED(layer, p, x, ctx)

    rows = gradcheck.check_network(SMALL_SPEC, (9, 8, 2), rng(), "float32", fns=fns)
    # Only conv1 sits below the ReLU; the hand-derived path is untouched.
    assert failed(rows) == {f"net/conv1/{k} custom_vjp vs autodiff" for k in ("kernel", "bias")}


# --------------------------------------------------------------------------- tolerances, report


def test_tolerances_are_ordered_by_precision():
    assert gradcheck.TOL_AUTODIFF["float32"] > gradcheck.TOL_AUTODIFF["float64"] > 0
    assert gradcheck.TOL_TIES["float64"] == 0.0  # integer data: exact, so bit for bit
    # FD is noisier than autodiff in the same precision, and still far below an O(1) bug.
    assert gradcheck.TOL_AUTODIFF["float64"] < gradcheck.TOL_FD < 1e-3
    assert gradcheck.TOL_AUTODIFF["float32"] > 100 * np.finfo(np.float32).eps


def test_table_and_summary_report_failures():
    rows = conv_rows(ConvUnflipped, "float32")  # kernel, bias, dx vs autodiff
    table = gradcheck.format_table(rows)
    assert table.splitlines()[0].split()[:3] == ["check", "case", "dtype"]
    assert len(table.splitlines()) == len(rows) + 1 and "FAIL" in table and "pass" in table
    assert gradcheck.summary(rows).startswith("3 checks, 1 failed")
    (dx,) = [r for r in gradcheck.aggregate(rows + rows) if r.check.startswith("ConvUnflipped/dx")]
    assert dx.case == "2 cases" and not dx.passed


def test_progress_line_names_the_worst_check_and_the_failures():
    good, bad = conv_rows(dtype="float32"), conv_rows(ConvUnflipped, "float32")
    worst = max(good, key=lambda r: r.max_rel_err)
    assert gradcheck.progress_line("layers 1/8", good) == (
        f"float32  layers 1/8: {len(good)} checks, worst {worst.max_rel_err:.1e} (tol 1e-04, "
        f"{worst.check}), pass"
    )
    line = gradcheck.progress_line("layers 2/8", bad)
    assert line.startswith(f"float32  layers 2/8: {len(bad)} checks, worst ")
    assert line.endswith(f"FAIL: {', '.join(sorted(failed(bad)))}")


def test_groups_check_one_layer_case_at_a_time_on_the_same_data():
    """The groups the entry point reports as it goes hold the rows layer_checks draws at once."""
    first_two = list(itertools.islice(gradcheck.groups(0, 5, ("float32",), 2), 2))
    assert [group for group, _ in first_two] == ["layers 1/2", "layers 2/2"]
    rngs = (np.random.default_rng([5, i]) for i in itertools.count())
    assert [row for _, rows in first_two for row in rows] == gradcheck.layer_checks(
        rngs, "float32", 2
    )


def test_groups_in_two_processes_give_the_rows_of_one():
    one = list(gradcheck.groups(1, 3, ("float32", "float64"), 1))
    two = list(gradcheck.groups(1, 3, ("float32", "float64"), 1, jobs=2))
    assert [name for name, _ in one] == ["layers 1/1", "REFERENCE_CNN", "random spec 1/1"] * 2
    assert [len(rows) for _, rows in two] == [len(rows) for _, rows in one]
    pairs = [
        pair for (_, r1), (_, r2) in zip(one, two, strict=True) for pair in zip(r1, r2, strict=True)
    ]
    # The same checks on the same cases with the same verdicts, and errors within a tenth of
    # their tolerance (exact on ties). They were bit for bit equal in every run but one of this
    # test, with the machine fully loaded by other work; that difference was not reproduced.
    for a, b in pairs:
        assert (a.check, a.case, a.dtype, a.tolerance, a.passed) == (
            b.check, b.case, b.dtype, b.tolerance, b.passed
        )  # fmt: skip
        assert abs(a.max_rel_err - b.max_rel_err) <= a.tolerance / 10, (a, b)


def test_workers_refuse_a_registry_they_cannot_rebuild():
    """A worker imports the module of every kind registered here; a kind defined where no
    import reaches it (in a function, in __main__) would change the plan's seeds there, so the
    worker says which kind and what to do instead of checking other cases."""

    @dataclasses.dataclass(frozen=True)
    class Local(layers.Layer):
        def output_shape(self, in_shape):
            return tuple(in_shape)

    layers.register(Local)
    try:
        with pytest.raises(RuntimeError, match=r"layer kinds Local \((tests\.)?test_gradcheck\)"):
            list(gradcheck.groups(0, 0, ("float32",), 1, jobs=2))
    finally:
        del layers.KINDS["Local"]


def test_the_plan_seeds_each_group_as_the_groups_before_it_left_the_stream():
    """Group k's generators are the ones a single stream of default_rng([seed, i]) reaches
    after the groups before k drew theirs, so a group can run alone."""
    per_case = len(layers.KINDS) + 1  # a generator per kind and one for the loss
    planned = gradcheck.plan(2, 4, ("float32",), 2)
    assert [g.name for g in planned] == [
        "layers 1/2", "layers 2/2", "REFERENCE_CNN", "random spec 1/2", "random spec 2/2"
    ]  # fmt: skip
    rng = np.random.default_rng([4, 2 * per_case + 2])  # after both layer cases and REFERENCE_CNN
    spec, shape = gradcheck.random_spec(rng)
    kw = dict(case="random spec 1", label_smoothing=0.1)  # every other network smooths
    want = gradcheck.check_network(spec, shape, rng, "float32", **kw)
    assert planned[4].run() == want


PROGRESS_LINE = re.compile(r"float32  (.+): (\d+) checks, worst \S+ \(tol 1e-04, .+\), pass")


def _gradcheck(num_random_specs: int, kill_at=None, extra=()):
    """The entry point on one float32 layer case, REFERENCE_CNN and `num_random_specs` random
    networks (~10 s), its stdout to a pipe, block-buffered as on a cluster (no PYTHONUNBUFFERED);
    SIGKILLed at faults point `kill_at` if given."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED", "CNNJAX_KILL_AT")}
    env |= {"CNNJAX_KILL_AT": kill_at} if kill_at else {}
    command = [sys.executable, "-m", "experiments.gradcheck", "--config.layer_cases=1", *extra]
    command += [f"--config.num_random_specs={num_random_specs}", "--config.dtypes=('float32',)"]
    return subprocess.run(
        command, cwd=REPO, stdout=subprocess.PIPE, text=True, timeout=300, env=env
    )


def test_the_entry_point_reports_each_group_before_the_table():
    done = _gradcheck(1, extra=["--jobs=2"])  # in order, though two processes check them
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    progress = [PROGRESS_LINE.fullmatch(line) for line in lines[:3]]
    assert [m[1] for m in progress] == ["layers 1/1", "REFERENCE_CNN", "random spec 1/1"]
    assert lines[3] == "" and lines[4].split()[:3] == ["check", "case", "dtype"]
    checks = sum(int(m[2]) for m in progress)
    assert re.search(rf"^{checks} checks, 0 failed", done.stdout, re.MULTILINE)


def test_the_entry_points_group_lines_are_flushed_as_they_come():
    """Killed (SIGKILL) right after its first group: its line had reached the pipe already."""
    done = _gradcheck(0, kill_at="gradcheck.group:1")
    assert done.returncode == -9
    (line,) = done.stdout.splitlines()
    assert PROGRESS_LINE.fullmatch(line)[1] == "layers 1/1"
