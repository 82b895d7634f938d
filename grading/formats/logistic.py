"""The logistic format (the notebook's LogisticRegression): built-in `class-api`, part "logistic".

A student writes a class LogisticRegression(n_in, n_out) with attributes W and b, forward(X) ->
softmax probabilities, loss(X, y) and grad_loss(X, y_true, y_pred) -> (grad_W, grad_b). grad_loss
gets predictions of its own (not the reference's probabilities), so its gradients are checked on
their own. The class API's planning and reading back are the class format's (classes.py).
"""

from __future__ import annotations

from grading.adapters import Expected
from grading.adapters import observe as _observe
from grading.formats import _mlp
from grading.formats._mlp import build_cases, diagnose, notes, sweep  # noqa: F401 (this format's hooks)
from grading.formats.classes import extract_api, formula, plan_api, shrink_case  # noqa: F401
from grading.shrink import mlp_candidates as shrink_candidates  # noqa: F401
from grading.shrink import probe_inputs as shrink_inputs  # noqa: F401

NAME = "logistic"
TITLE = "a LogisticRegression class with forward, loss and grad_loss(X, y_true, y_pred)"
CHECKS = ("forward", "loss", "weight_gradients", "bias_gradients", "stability")
NAMES = {"class": "LogisticRegression", "W": "W", "b": "b", "forward": "forward", "loss": "loss", "grad": "grad_loss"}
KEYS = ("W", "b")
DRIVER = _mlp.SHARED_DRIVER
NETWORK = True  # parse_options fills Part's network fields (assignment.NETWORK_FIELDS)
STEP_ROWS = None  # no training step


def parse_options(raw: dict, where: str, source: str) -> dict:
    return _mlp.parse_options(raw, where, source, NAME, dense_layers=1, logits=False)


def validate(part, where: str, source: str) -> None:
    _mlp.validate(part, where, source)


def needed_names(part) -> tuple[str, ...]:
    return (part.names["class"],)


def plan(part, case, rng) -> None:
    plan_api(part, case, rng, KEYS, predictions=True, trains=False)


def observe(part, case, results: dict) -> dict:
    return _observe(part, case, results, extract)


def extract(part, case, exp: Expected, record, items: dict[str, int]):
    return extract_api(part, case, exp, record, KEYS)
