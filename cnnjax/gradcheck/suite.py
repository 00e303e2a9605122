"""The built-in gradient checks, on the engine (cnnjax.gradcheck.engine): every registered
layer kind on the random cases its `gradcheck_cases` draws (`check_layer`, `layer_checks`), the
loss, and whole networks (the reference CNN and random specs) by manual backprop and by the
custom_vjp twins (`check_network`); cnnjax.gradcheck.plan schedules them as `make gradcheck`
reports them."""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import backprop, grads, layers, losses, models
from cnnjax.gradcheck.engine import TOL_AUTODIFF, Hand, check_hands, check_vjp, compare, draw, x64
from cnnjax.gradcheck.report import Row, raise_failures
from cnnjax.layers.base import draw_padding, draw_pair

# The rows of jax.grad through a layer's `apply` where it is a formulation for speed, checked
# against jax.grad through its plain `autodiff_reference` (the rows' "autodiff").
AUTODIFF_OF_APPLY = " jax.grad of apply"


def _given(rng, shape, kind="continuous") -> np.ndarray:
    """Continuous data drawn now; for a tie-heavy `kind` zeros, which check_vjp redraws."""
    return draw(rng, shape) if kind == "continuous" else np.zeros(shape)


# --------------------------------------------------------------------------- the loss


def check_cross_entropy(case, rng, dtype, rule=grads.cross_entropy_vjp) -> list[Row]:
    """dlogits_NK, (N, K) = case["shape"], for case["target"]: "int" labels, "soft" probability
    targets, or "smoothed" int labels with case["label_smoothing"]."""
    (n, k), smoothing = case["shape"], case.get("label_smoothing", 0.0)
    logits, labels = draw(rng, (n, k)), rng.integers(0, k, n)
    if case["target"] == "soft":
        e = np.exp(draw(rng, (n, k)))
        labels = e / e.sum(axis=1, keepdims=True)

    def hand(z, dy):  # dy weighs each example's loss
        return dy[:, None] * rule(z, labels, label_smoothing=smoothing)

    forward = functools.partial(losses.cross_entropy, labels=labels, label_smoothing=smoothing)
    check = f"cross_entropy[{case['target']}]"
    where = dict(name=check, argnames=("dlogits",), case=case, dtypes=dtype, seed=rng)
    return check_vjp(forward, hand, logits, **where)


# --------------------------------------------------------------------------- layer kinds


def check_layer(
    layer: layers.Layer,
    in_shape,
    *,
    batch: int = 1,
    train: bool = False,
    dtypes=("float32", "float64"),
    data=None,
    seed=0,
) -> list[Row]:
    """A layer kind's hand-derived rule (cnnjax.layers protocol) vs autodiff and FD, through
    check_vjp's engine, on a batch of `batch` examples of `in_shape`.

    f(params, x_N) is the layer's one-example `apply` vmapped over the batch (axis layers.BATCH),
    so a rule through batch statistics is checked whole; the reference is jax.vjp of its
    `autodiff_reference` (apply itself, unless apply is a form for speed). The hands: its `vjp`,
    vmapped with the parameter gradients summed (rows "Kind/dx", "Kind/kernel", ...), where the
    kind has its own batched form its `vjp_batch` (rows "... batched"), and where apply is a
    form for speed jax.vjp of apply (rows "... jax.grad of apply"). Params are its `init`, every
    leaf shifted by N(0, 0.1^2) (init's zeros and ones hide a rule that drops a term); state its
    `init_state`, in the checked dtype; in train mode (`train`) its key is fixed by `seed`.
    `data` as check_vjp (tie-heavy data for a kind with a policy at its kinks)."""
    dtypes = (dtypes,) if isinstance(dtypes, str) else tuple(dtypes)
    rows, in_shape = [], tuple(in_shape)
    for dtype in dtypes:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        key = jax.random.key(int(rng.integers(2**31)))
        params = layer.init(key, in_shape, jnp.float32)
        params = jax.tree.map(lambda p, r=rng: np.asarray(p) + 0.1 * draw(r, np.shape(p)), params)
        x_N = _given(rng, (batch, *in_shape), data or "continuous")
        state = layer.init_state(in_shape, jnp.float32)

        def ctx(dtype, key=key, state=state):
            cast = jax.tree.map(lambda s: jnp.asarray(s, dtype), state)
            return layers.Context(train, key if train else None, cast)

        def forward(p, x_N, fns=layers.PLAIN):
            one = lambda x: fns(layer, p, x, ctx(x_N.dtype))  # noqa: E731
            return jax.vmap(one, axis_name=layers.BATCH)(x_N)

        reference = functools.partial(forward, fns=layers.AUTODIFF_REFERENCE)

        def autodiff(p, x_N, dy_N):
            return jax.vjp(forward, p, x_N)[1](dy_N), None

        def vmapped(p, x_N, dy_N):
            dx_N, dp = layers.Layer.vjp_batch(layer, p, x_N, dy_N, ctx(x_N.dtype))
            return (dp, dx_N), None

        def batched(p, x_N, dy_N):
            dx_N, dp = layer.vjp_batch(p, x_N, dy_N, ctx(x_N.dtype))
            return (dp, dx_N), None

        hands = [Hand("", vmapped, True)]
        if type(layer).vjp_batch is not layers.Layer.vjp_batch:
            hands.append(Hand(" batched", batched, True))
        if _fast_form(layer):
            hands.append(Hand(AUTODIFF_OF_APPLY, autodiff, False))
        case = {"layer": layer, "x_shape": in_shape, "batch": batch, "train": train}
        where = dict(name=type(layer).__name__, argnames=("", "dx"), case=case, data=data)
        rows += check_hands(
            reference, forward, hands, (params, x_N), dtype=dtype, rng=rng, **where
        )[0]
    return rows


def assert_layer(layer: layers.Layer, in_shape, **kwargs) -> list[Row]:
    """check_layer, raising AssertionError with the failing rows' table (for pytest)."""
    return raise_failures(check_layer(layer, in_shape, **kwargs))


def check_kind(kind: type[layers.Layer], rng, dtype) -> list[Row]:
    """A registered kind on the cases of one draw of its `gradcheck_cases(rng)`, on continuous
    data and on each tie-heavy data kind its rule has a policy for."""
    rows = []
    for case in kind.gradcheck_cases(rng):
        kw = dict(batch=case.batch, train=case.train, dtypes=dtype, seed=rng)
        for data in (None, *case.tie_kinds):
            rows += check_layer(case.layer, case.in_shape, data=data, **kw)
    return rows


def layer_checks(rngs, dtype: str, num_cases: int = 4, kinds=None) -> list[Row]:
    """Every registered layer kind and the loss on `num_cases` random cases (only the kinds of
    `kinds`, without the loss, if given); `rngs` yields a Generator per kind and case (seeded by
    position, so every dtype sees the same cases and data)."""
    rows, own = [], kinds is not None
    kinds = list(layers.KINDS.values()) if kinds is None else list(kinds)
    for _ in range(num_cases):
        for kind in kinds:
            rows += check_kind(kind, next(rngs), dtype)
        if own:
            continue
        r = next(rngs)
        shape, smoothing = (int(r.integers(1, 5)), int(r.integers(2, 7))), r.uniform(0.05, 0.5)
        for target in ("int", "soft", "smoothed"):
            case = {"shape": shape, "target": target}
            case |= {"label_smoothing": float(smoothing)} if target == "smoothed" else {}
            rows += check_cross_entropy(case, r, dtype)
    return rows


# --------------------------------------------------------------------------- whole networks


def random_spec(rng) -> tuple[models.Spec, tuple[int, int, int]]:
    """A small valid network and its input shape: 8-16 px, 1-3 channels; 1-3 blocks, each a
    conv (kernel 1-4, stride 1-3, any padding), maybe BatchNorm (the conv then without its bias,
    whose gradient would be exactly zero), an activation (ReLU, Tanh or
    GELU) and maybe a max or avg pool (window 2-3, stride 1-3, any padding), a block sometimes
    wrapped in a Residual (a projection where its shape changes); Flatten or GlobalAvgPool,
    maybe Dropout, 1-2 Dense. Redrawn until models.output_shapes accepts it."""
    activations = (layers.ReLU, layers.ReLU, layers.Tanh, layers.GELU)
    while True:
        shape, spec = (*draw_pair(rng, 8, 16), int(rng.integers(1, 4))), []
        for _ in range(rng.integers(1, 4)):
            features, kernel, stride = (
                int(rng.integers(1, 5)),
                draw_pair(rng, 1, 4),
                draw_pair(rng, 1, 3),
            )
            norm = rng.integers(3) == 0  # a BatchNorm after the conv, which then has no bias
            block = [models.Conv(features, kernel, stride, draw_padding(rng), use_bias=not norm)]
            block += [layers.BatchNorm(momentum=0.9)] if norm else []
            block.append(activations[rng.integers(len(activations))]())
            pool = (draw_pair(rng, 2, 3), draw_pair(rng, 1, 3), draw_padding(rng))
            if (choice := rng.integers(3)) == 1:
                block.append(models.MaxPool(*pool))
            elif choice == 2:
                block.append(models.AvgPool(*pool, count_include_pad=bool(rng.integers(2))))
            spec += [layers.Residual(block)] if rng.integers(4) == 0 else block
        spec.append(models.Flatten() if rng.integers(3) else layers.GlobalAvgPool())
        spec += [layers.Dropout(0.3)] if rng.integers(4) == 0 else []
        if rng.integers(2):
            spec += [models.Dense(int(rng.integers(2, 9))), models.ReLU()]
        spec.append(models.Dense(int(rng.integers(2, 6))))
        with contextlib.suppress(ValueError):
            models.output_shapes(tuple(spec), shape)
            return tuple(spec), shape


def _network_inputs(spec, input_shape, rng, dtype, batch):
    """Params (init's kernels, biases N(0, 0.1^2)), x_NHWC normal, labels_N; x64 set if float64."""
    params = models.init(jax.random.key(int(rng.integers(2**31))), spec, input_shape, dtype)
    params = _with_random_biases(params, rng, dtype)
    num_classes = models.output_shapes(spec, input_shape)[-1][0]
    x_NHWC = jnp.asarray(draw(rng, (batch, *input_shape)), dtype)
    return params, x_NHWC, rng.integers(0, num_classes, batch)


def _with_random_biases(params: dict, rng, dtype) -> dict:
    """Every "bias" leaf, at any depth, N(0, 0.1^2) (init's zeros hide a rule that drops one),
    drawn in the params' own order."""
    redrawn = {}
    for k, p in params.items():
        if isinstance(p, dict):
            redrawn[k] = _with_random_biases(p, rng, dtype)
        else:
            redrawn[k] = jnp.asarray(0.1 * draw(rng, np.shape(p)), dtype) if k == "bias" else p
    return redrawn


def check_network(
    spec,
    input_shape,
    rng,
    dtype,
    *,
    prefix="net",
    case="",
    batch=3,
    label_smoothing=0.0,
    value_and_grad=backprop.value_and_grad,
    fns=models.HAND_DERIVED,
    train=None,
) -> list[Row]:
    """`value_and_grad(params, x, labels, spec, label_smoothing=, state=, train=, key=)`, and
    jax.grad through `fns` (the custom_vjp twins), vs jax.value_and_grad(models.loss) through
    each layer's `autodiff_reference` per leaf, named by its path ("net/conv1/kernel hand vs
    autodiff"); where a layer's apply is a form for speed, jax.grad through apply too (rows
    "... jax.grad of apply vs autodiff"); in float64 the first vs FD too.
    The engine of check_vjp, on f = params -> loss. In train mode (`train`; None: when the spec
    has BatchNorm or Dropout) the loss runs on the batch's statistics (the rules through them
    checked whole) and Dropout's masks from a key drawn from `rng`; the state is init_state's."""
    if train is None:
        train = _has_mode(spec)
    with x64(dtype):
        params, x, labels = _network_inputs(spec, input_shape, rng, dtype, batch)
        state = jax.tree.map(lambda a: a.astype(dtype), models.init_state(spec, input_shape))
    key = jax.random.key(int(rng.integers(2**31))) if train else None
    kw = dict(label_smoothing=label_smoothing)
    kw |= dict(state=state, train=train, key=key) if state or train else {}

    def loss(p, fns=layers.AUTODIFF_REFERENCE):
        return models.loss(p, x, labels, spec, **kw, fns=fns)

    def hand(p, dy):  # the VJP of a scalar: dy times the gradient
        value, g = value_and_grad(p, x, labels, spec, **kw)
        return jax.tree.map(lambda leaf: dy * leaf, g), value

    def custom_vjp(p, dy):
        return jax.vjp(functools.partial(loss, fns=fns), p)[1](dy)[0], None

    # jax.grad of the layers' apply as the training step takes it: in train mode, which for a
    # spec without BatchNorm or Dropout computes what eval mode does (a pool's form aside).
    trained = dict(kw, train=True) if train or not _has_mode(spec) else kw

    def autodiff(p, dy):
        f = lambda p: models.loss(p, x, labels, spec, **trained, fns=models.PLAIN)  # noqa: E731
        return jax.vjp(f, p)[1](dy)[0], None

    hands = [Hand(" hand", hand, True), Hand(" custom_vjp", custom_vjp, False)]
    if any(_fast_form(layer) for layer in _flat(spec)):
        hands.append(Hand(AUTODIFF_OF_APPLY, autodiff, False))
    where = dict(name=prefix, argnames=("",), case=case)
    rows, want, (got, *_) = check_hands(loss, loss, hands, (params,), dtype=dtype, rng=rng, **where)
    tol = TOL_AUTODIFF[dtype]
    return [compare(f"{prefix}/loss hand vs autodiff", case, dtype, got, want, tol), *rows]


def _has_mode(spec) -> bool:
    """Whether train and eval mode compute different things: BatchNorm or Dropout."""
    return any(isinstance(layer, layers.BatchNorm | layers.Dropout) for layer in _flat(spec))


def _fast_form(layer) -> bool:
    """Whether a layer's `apply` is a formulation for speed beside a plain `autodiff_reference`:
    then jax.grad of apply is checked too, against jax.grad of the reference."""
    return type(layer).autodiff_reference is not layers.Layer.autodiff_reference


def _flat(spec) -> list:
    """The layers of a spec, a Residual's body's included."""
    return [x for layer in spec for x in (layer, *_flat(getattr(layer, "body", ())))]
