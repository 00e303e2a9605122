"""cnnjax's peers: the same network trained the way flax.nnx, flax.linen and PyTorch teach it.

Each loop is its framework's documented idiom, not a port of cnnjax's trainer: the step takes a
host batch (what a data loader yields: float32 in [0, 1], NHWC for Flax, NCHW tensors for
PyTorch), optax.sgd or torch.optim.SGD with momentum, the mean softmax cross-entropy.
  flax.nnx    an nnx.Module, nnx.Optimizer(model, tx, wrt=nnx.Param), an @nnx.jit step that
              updates the model in place (flax's MNIST tutorial);
  flax.linen  flax.training.train_state.TrainState and a jax.jit step that returns the new
              state (flax's examples/mnist);
  PyTorch     an nn.Module with zero_grad / backward / step, eager or under torch.compile.
The Flax modules are `flax_models.NnxCNN` and `LinenCNN`: nnx.Conv / nnx.Linear and nn.Conv /
nn.Dense with Flax's own pools, unrolled from the spec at trace time, so the program they give is
the one a hand-written module gives. Every peer starts from a pure params tree, so all of them
(and cnnjax) can start from the same weights. PyTorch is optional (`pip install -e .[torch]`) and
imported only by `torch_peer`.

Legend: x_BHWC uint8 images as stored, labels_B int class ids, logits_BK.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from flax import nnx
from flax.training import train_state

from cnnjax import flax_models, models


class Peer(NamedTuple):
    """One framework's training loop on one network, holding its own params and optimizer."""

    batch: Callable[[Any, Any], Any]  # (x_BHWC uint8, labels_B) -> the batch `step` takes
    step: Callable[[Any], Any]  # (batch) -> its loss before the update; may still be computing
    logits: Callable[[Any], Any]  # (batch) -> logits_BK of its images, forward only
    wait: Callable[[Any], Any]  # (a result of step or logits) -> it as numpy, once computed


def _host_batch(x_BHWC, labels_B):
    """What a Flax data pipeline yields: float32 images in [0, 1], int32 labels, on the host."""
    return np.asarray(x_BHWC, np.float32) / np.float32(255), np.asarray(labels_B, np.int32)


def _mean_cross_entropy(logits_BK, labels_B):
    return optax.softmax_cross_entropy_with_integer_labels(logits_BK, labels_B).mean()


def _jax_wait(value):
    return jax.tree.map(np.asarray, jax.block_until_ready(value))


# --------------------------------------------------------------------------- flax.nnx


@nnx.jit
def _nnx_train_step(model, optimizer, x_BHWC, labels_B):
    def loss_fn(model):
        return _mean_cross_entropy(model(x_BHWC), labels_B)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def _nnx_logits(model, x_BHWC):
    return model(x_BHWC)


def nnx_peer(params, spec, input_shape, *, learning_rate: float, momentum: float) -> Peer:
    """flax.nnx: `flax_models.NnxCNN` holding `params`, trained with nnx.Optimizer."""
    model = flax_models.pure_to_nnx(params, spec, input_shape)
    optimizer = nnx.Optimizer(model, optax.sgd(learning_rate, momentum), wrt=nnx.Param)
    return Peer(
        batch=_host_batch,
        step=lambda b: _nnx_train_step(model, optimizer, *b),
        logits=lambda b: _nnx_logits(model, b[0]),
        wait=_jax_wait,
    )


# --------------------------------------------------------------------------- flax.linen


@jax.jit
def _linen_train_step(state, x_BHWC, labels_B):
    def loss_fn(params):
        return _mean_cross_entropy(state.apply_fn({"params": params}, x_BHWC), labels_B)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss


@jax.jit
def _linen_logits(state, x_BHWC):
    return state.apply_fn({"params": state.params}, x_BHWC)


def linen_peer(params, spec, *, learning_rate: float, momentum: float) -> Peer:
    """flax.linen: `flax_models.LinenCNN` in a TrainState, a jitted step returning the new state."""
    state = train_state.TrainState.create(
        apply_fn=flax_models.LinenCNN(spec).apply,
        params=flax_models.pure_to_linen(params)["params"],
        tx=optax.sgd(learning_rate, momentum),
    )
    holder = [state]

    def step(batch):
        holder[0], loss = _linen_train_step(holder[0], *batch)
        return loss

    logits = lambda b: _linen_logits(holder[0], b[0])  # noqa: E731
    return Peer(batch=_host_batch, step=step, logits=logits, wait=_jax_wait)


# --------------------------------------------------------------------------- PyTorch


def to_torch_state(params) -> dict:
    """The reference CNN's pure params as a torch state_dict (numpy arrays).

    Kernels HWIO -> OIHW, dense IO -> OI. cnnjax flattens a 5x5x64 map in H, W, C order, PyTorch
    a 64x5x5 map in C, H, W order, so dense1's 1600 input rows are reordered to match."""
    p = jax.tree.map(np.asarray, params)
    conv = lambda w_HWIO: np.ascontiguousarray(w_HWIO.transpose(3, 2, 0, 1))  # noqa: E731
    w1_IO = p["dense1"]["kernel"]
    w1_HWCO = w1_IO.reshape(5, 5, 64, w1_IO.shape[1])
    w1_OCHW = w1_HWCO.transpose(3, 2, 0, 1).reshape(w1_IO.shape[1], -1)
    return {
        "conv1.weight": conv(p["conv1"]["kernel"]), "conv1.bias": p["conv1"]["bias"],
        "conv2.weight": conv(p["conv2"]["kernel"]), "conv2.bias": p["conv2"]["bias"],
        "dense1.weight": np.ascontiguousarray(w1_OCHW), "dense1.bias": p["dense1"]["bias"],
        "dense2.weight": np.ascontiguousarray(p["dense2"]["kernel"].T),
        "dense2.bias": p["dense2"]["bias"],
    }  # fmt: skip


def torch_model(params):
    """The reference CNN as a torch.nn.Module, written as PyTorch's tutorials write it, holding
    `params` (converted by `to_torch_state`)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class ReferenceCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, kernel_size=3)
            self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
            self.dense1 = nn.Linear(64 * 5 * 5, 128)
            self.dense2 = nn.Linear(128, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            x = torch.flatten(x, 1)
            return self.dense2(F.relu(self.dense1(x)))

    model = ReferenceCNN()
    model.load_state_dict({k: torch.tensor(v) for k, v in to_torch_state(params).items()})
    return model


def torch_peer(
    params, spec, *, learning_rate: float, momentum: float, compile=False, threads=None
) -> Peer:
    """PyTorch on the reference CNN, eager or `torch.compile`d; `threads` intra-op threads (None:
    every core, PyTorch's own default, set explicitly)."""
    if tuple(spec) != models.REFERENCE_CNN:
        raise ValueError("the PyTorch peer is written for models.REFERENCE_CNN only")
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads or os.cpu_count())
    model = torch_model(params)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum)
    net = torch.compile(model) if compile else model

    def batch(x_BHWC, labels_B):  # what a DataLoader yields: NCHW float32, int64 labels
        x_BCHW = np.asarray(x_BHWC, np.float32).transpose(0, 3, 1, 2) / np.float32(255)
        return torch.from_numpy(np.ascontiguousarray(x_BCHW)), torch.as_tensor(
            np.asarray(labels_B), dtype=torch.int64
        )

    def step(batch):
        x, y = batch
        optimizer.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        return loss

    def logits(batch):
        model.eval()
        with torch.no_grad():
            out = net(batch[0])
        model.train()
        return out

    return Peer(batch, step, logits, wait=lambda value: value.detach().numpy())
