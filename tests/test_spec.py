"""ModelSpec: JSON round trips, layer names, presets as the course notebooks define them.

spec.to_json() -> ModelSpec.from_json() is the identity, for every preset and every test case
spec.layer_names() counts per kind from 1: dense_1, sigmoid_1, dense_2, ...
preset(name, **changes) -> a copy with the changes; an unknown name is a SpecError listing the presets
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from cases import LAYER_CASES, LOSS_CASES

from reference.errors import SpecError
from reference.network import Network
from reference.spec import PRESETS, LayerSpec, ModelSpec, OptimizerSpec, preset

ALL_SPECS = {**PRESETS, **LAYER_CASES, **LOSS_CASES}


@pytest.mark.parametrize("name", sorted(ALL_SPECS))
def test_json_round_trip(name):
    spec = ALL_SPECS[name]
    text = spec.to_json()
    back = ModelSpec.from_json(text)
    assert back == spec
    assert back.to_json() == text
    assert isinstance(back.layers, tuple) and all(isinstance(layer, LayerSpec) for layer in back.layers)
    assert isinstance(back.optimizer, OptimizerSpec)
    json.loads(text)  # plain JSON, nothing Python-specific


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_round_tripped_preset_builds_the_same_network(name):
    a = Network(PRESETS[name], seed=7)
    b = Network(ModelSpec.from_json(PRESETS[name].to_json()), seed=7)
    assert a.params.keys() == b.params.keys()
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)


@pytest.mark.parametrize(
    ("name", "names"),
    [
        ("mnist-sigmoid-per-sample", ["dense_1", "sigmoid_1", "dense_2", "sigmoid_2", "dense_3"]),
        ("mnist-relu-batched", ["dense_1", "relu_1", "dense_2"]),
        ("mnist-relu-deep", ["dense_1", "relu_1", "dense_2", "relu_2", "dense_3"]),
        ("digits-sigmoid-per-sample", ["dense_1", "sigmoid_1", "dense_2", "softmax_1"]),
    ],
)
def test_layer_names_of_the_presets(name, names):
    assert PRESETS[name].layer_names() == names
    assert Network(PRESETS[name]).trace(*_one_sample(PRESETS[name])).names == names


def _one_sample(spec: ModelSpec):
    return np.zeros((1, spec.n_in), spec.dtype), np.zeros(1, dtype=np.int64)


def test_layer_names_count_per_kind():
    spec = LAYER_CASES["batchnorm_torch"]
    assert spec.layer_names() == ["dense_1", "batchnorm_1", "tanh_1", "dense_2"]
    spec = ModelSpec(
        n_in=2,
        layers=(
            LayerSpec("dense", units=3),
            LayerSpec("leaky_relu"),
            LayerSpec("dropout"),
            LayerSpec("dense", units=3),
            LayerSpec("leaky_relu"),
            LayerSpec("dense", units=1),
        ),
    )
    assert spec.layer_names() == ["dense_1", "leaky_relu_1", "dropout_1", "dense_2", "leaky_relu_2", "dense_3"]
    assert spec.n_out == 1


def test_presets_are_the_course_configurations():
    """The course notebooks, as issue 2 describes them (and issue 18: the digits lab's inputs, seed 001 raw)."""
    units = {n: [layer.units for layer in s.layers if layer.kind == "dense"] for n, s in PRESETS.items()}
    kinds = {n: sorted({layer.kind for layer in s.layers} - {"dense"}) for n, s in PRESETS.items()}
    assert units == {
        "mnist-sigmoid-per-sample": [32, 32, 10],
        "mnist-relu-batched": [128, 10],
        "mnist-relu-batched-raw": [128, 10],
        "mnist-relu-deep": [100, 200, 10],
        "mnist-cnn": [10],
        "digits-sigmoid-per-sample": [32, 10],
    }
    assert kinds == {
        "mnist-sigmoid-per-sample": ["sigmoid"],
        "mnist-relu-batched": ["relu"],
        "mnist-relu-batched-raw": ["relu"],
        "mnist-relu-deep": ["relu"],
        "mnist-cnn": ["conv2d", "flatten", "maxpool2d", "relu"],
        "digits-sigmoid-per-sample": ["sigmoid", "softmax"],
    }
    hw = PRESETS["mnist-sigmoid-per-sample"]
    assert (hw.n_in, hw.loss, hw.init, hw.optimizer.name, hw.optimizer.lr, hw.preprocess, hw.batch_size) == (
        784, "softmax_cross_entropy", "normal_inv_max_fan", "sgd", 0.003, "raw", 1,
    )  # fmt: skip
    deep = PRESETS["mnist-relu-deep"]
    assert (deep.batch_size, deep.optimizer.lr, deep.init) == (32, 0.1, "he_normal")
    assert PRESETS["mnist-relu-batched"].batch_size == 128
    batched, raw = PRESETS["mnist-relu-batched"], PRESETS["mnist-relu-batched-raw"]
    assert (raw.preprocess, raw.optimizer.lr) == ("raw", 1e-5)  # seed 001 as it runs
    assert raw.replace(preprocess="scale255", optimizer={"lr": 0.1}, name=batched.name, description="") == (
        batched.replace(description="")
    )  # otherwise the same preset
    digits = PRESETS["digits-sigmoid-per-sample"]
    assert (digits.n_in, digits.batch_size, digits.dataset, digits.layers[-1].kind) == (64, 1, "digits", "softmax")
    assert (digits.preprocess, digits.optimizer.lr, digits.loss, digits.reduction) == (
        "standardise", 0.01, "cross_entropy", "sum",
    )  # fmt: skip
    assert all(s.name == n for n, s in PRESETS.items())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_with_a_dtype(name, dtype):
    spec = preset(name, dtype=dtype)
    assert spec.dtype == dtype
    assert dataclasses.replace(spec, dtype=PRESETS[name].dtype) == PRESETS[name]
    net = Network(spec)
    assert all(p.dtype == np.dtype(dtype) for p in net.params.values())


def test_preset_without_changes_is_the_preset_and_changes_do_not_leak():
    assert preset("mnist-relu-batched") is PRESETS["mnist-relu-batched"]
    changed = preset("mnist-relu-batched", n_in=5, optimizer={"lr": 0.5, "name": "adam"})
    assert (changed.n_in, changed.optimizer.lr, changed.optimizer.name) == (5, 0.5, "adam")
    assert changed.optimizer.momentum == PRESETS["mnist-relu-batched"].optimizer.momentum
    assert PRESETS["mnist-relu-batched"].n_in == 784 and PRESETS["mnist-relu-batched"].optimizer.lr == 0.1


def test_unknown_preset():
    with pytest.raises(
        SpecError, match=r"unknown preset 'mnist-lstm'; presets are \['digits-sigmoid-per-sample', 'mnist-cnn'"
    ):
        preset("mnist-lstm")


def test_a_changed_preset_is_validated():
    with pytest.raises(SpecError, match="model spec: dtype must be one of"):
        preset("mnist-relu-batched", dtype="float16")


def test_specs_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["mnist-relu-batched"].n_in = 10  # type: ignore[misc]
