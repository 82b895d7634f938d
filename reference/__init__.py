"""The pure-numpy reference: an MLP with hand-written backpropagation (see README)."""

from reference.errors import DTypeError, InputError, LabelError, NonFiniteError, ShapeError, SpecError
from reference.network import Network, init_params
from reference.optimizers import make_optimizer
from reference.spec import PRESETS, LayerSpec, ModelSpec, OptimizerSpec, preset
from reference.trace import LayerTrace, Trace
from reference.train import evaluate, fit, train_epoch, train_step

__all__ = [
    "PRESETS",
    "DTypeError",
    "InputError",
    "LabelError",
    "LayerSpec",
    "LayerTrace",
    "ModelSpec",
    "Network",
    "NonFiniteError",
    "OptimizerSpec",
    "ShapeError",
    "SpecError",
    "Trace",
    "evaluate",
    "fit",
    "init_params",
    "make_optimizer",
    "preset",
    "train_epoch",
    "train_step",
]
