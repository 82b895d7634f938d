"""A batch is its samples: the batched gradient is the mean (reduction "mean") or the sum ("sum") of
the per-sample gradients, the batched loss likewise, and each row of a batched forward pass is that
sample's forward pass. Checked for every preset at full width, every layer and loss case, in both
dtypes, with the project's twin policy (the same function computed in another order).

BatchNorm in training mode couples the rows through the batch statistics, so its cases are checked
in eval mode only; dropout's rows are independent once each row gets its slice of the shared mask.
"""

from __future__ import annotations

import numpy as np
import pytest
from cases import LAYER_CASES, LOSS_CASES, make_batch
from helpers import assert_close

from oracles.compare import compare_params
from oracles.numeric import draw_masks
from reference.network import Network
from reference.spec import PRESETS, ModelSpec, preset


def per_sample_combination(net: Network, x, y, train: bool = True, masks=None):
    """(loss, grads, dL/dx rows) from one-sample traces, combined as the reduction says."""
    n = len(x)
    w = 1 / n if net.spec.reduction == "mean" else 1.0
    loss, grads, grad_in = 0.0, {}, []
    for i in range(n):
        row_masks = {k: m[i : i + 1] for k, m in (masks or {}).items()}
        t = net.trace(x[i : i + 1], y[i : i + 1], train=train, masks=row_masks)
        loss += w * np.float64(t.loss)
        for rec in t.layers:
            for k, g in rec.grads.items():
                grads[f"{rec.name}.{k}"] = grads.get(f"{rec.name}.{k}", 0.0) + w * g.astype(np.float64)
        grad_in.append(w * t.layers[0].grad_in.astype(np.float64))
    return loss, grads, np.concatenate(grad_in)


def check_batch_is_its_samples(spec: ModelSpec, batch: int, train: bool = True, seed: int = 0) -> None:
    net = Network(spec, seed=seed)
    x, y = make_batch(spec, batch, seed=seed + 1)
    masks = draw_masks(net, x) if train else None
    trace = net.trace(x, y, train=train, masks=masks)
    loss, grads, grad_in = per_sample_combination(net, x, y, train, masks)
    dtype = spec.dtype
    batched = {f"{rec.name}.{k}": g for rec in trace.layers for k, g in rec.grads.items()}
    compare_params(
        batched, {k: v.astype(dtype) for k, v in grads.items()}, oracle="twin", dtype=dtype, names=("batch", "samples")
    ).assert_ok()
    names = ("batch", "samples")
    assert_close("loss", trace.loss, loss, dtype, "loss", names=names, check_dtype=False)
    name = f"{trace.layers[0].name}.grad_in"
    assert_close(name, trace.layers[0].grad_in, grad_in, dtype, "gradient", names=names, check_dtype=False)
    # and the forward pass: row i of the batch is sample i
    rows = np.concatenate([net.forward(x[i : i + 1]) for i in range(batch)])
    assert_close("output", net.forward(x), rows, dtype, "forward", names=names)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_batch_gradient_is_the_mean_of_per_sample_gradients(name, dtype):
    """Full width (784 or 64 inputs); the digits preset sums, the others average."""
    check_batch_is_its_samples(preset(name, dtype=dtype), batch=16)


def test_the_digits_preset_sums_and_the_others_average():
    """The reduction each preset is checked under above is the one its course used."""
    assert {n: s.reduction for n, s in PRESETS.items()} == {
        "mnist-sigmoid-per-sample": "mean",
        "mnist-relu-batched": "mean",
        "mnist-relu-batched-raw": "mean",
        "mnist-relu-deep": "mean",
        "mnist-cnn": "mean",
        "digits-sigmoid-per-sample": "sum",
    }


ROW_INDEPENDENT = [c for c in LAYER_CASES if not c.startswith("batchnorm")]


@pytest.mark.parametrize("batch", [2, 7, 33])
@pytest.mark.parametrize("case", ROW_INDEPENDENT)
def test_layer_case_batch_is_its_samples(case, batch):
    check_batch_is_its_samples(LAYER_CASES[case], batch)


@pytest.mark.parametrize("case", [c for c in LAYER_CASES if c.startswith(("batchnorm", "dropout"))])
def test_eval_mode_batch_is_its_samples(case):
    check_batch_is_its_samples(LAYER_CASES[case], 7, train=False)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", sorted(LOSS_CASES))
def test_loss_case_batch_is_its_samples(case, dtype):
    check_batch_is_its_samples(LOSS_CASES[case].replace(dtype=dtype), 9)


def test_batchnorm_in_training_is_not_row_independent():
    """The exception above is real: the batch statistics couple the rows."""
    spec = LAYER_CASES["batchnorm_torch"]
    net = Network(spec, seed=0)
    x, _ = make_batch(spec, 6, seed=1)
    full = net.forward(x, train=True)
    half = net.forward(x[:3], train=True)
    assert np.abs(full[:3] - half).max() > 1e-3
