"""`bprop validate` on a few hundred real MNIST and digits rows: the same code as the full run
(tests/test_validate_mnist.py, --mnist), checked for its outputs and for its power to fail.

- One small run of every preset in both dtypes (module fixture): the JSON's keys, the report's
  sections, real PNGs, the terminal table, exit status 0.
- A deliberately broken reference (monkeypatched) makes validate fail with the reason, for a batched
  preset (parity) and for the chaotic per-sample preset (the agreement stretch).
- Chunked training (how validate drives every framework, for its progress bars) gives bit-identical
  parameters to one train_epoch call over the whole order.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

from helpers import assert_close  # noqa: E402

from bprop import jobs as J  # noqa: E402
from bprop import validate as V  # noqa: E402
from bprop.cli import main  # noqa: E402
from reference.spec import PRESETS  # noqa: E402

LIMIT = 300  # train and test rows
EPOCHS = 1
DIVERGENCE_STEPS = 300


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """Every preset, both dtypes, all three frameworks, in this process (workers=1)."""
    out = tmp_path_factory.mktemp("report")
    argv = ["validate", "--limit", str(LIMIT), "--epochs", str(EPOCHS), "--out", str(out), "--workers", "1"]
    argv += ["--divergence-steps", str(DIVERGENCE_STEPS), "--no-progress"]
    import contextlib
    import io

    buf = io.StringIO()
    plotted, make_plots = {}, V.make_plots

    def recording(*args):  # make_plots' inputs, for test_plots_in_worker_processes_are_the_same_files
        plotted["args"] = args
        return make_plots(*args)

    V.make_plots = recording
    try:
        with contextlib.redirect_stdout(buf):
            code = main(argv)
    finally:
        V.make_plots = make_plots
    return {
        "code": code,
        "out": out,
        "stdout": buf.getvalue(),
        "results": json.loads((out / "results.json").read_text()),
        "make_plots_args": plotted["args"],
    }


def test_small_run_is_accepted(small_run):
    assert small_run["code"] == 0, small_run["stdout"]
    assert small_run["results"]["acceptance"]["passed"] is True
    assert small_run["results"]["acceptance"]["n_fail"] == 0
    assert "ACCEPTED" in small_run["stdout"]


@pytest.mark.parametrize("preset_name", sorted(PRESETS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_json_has_every_figure(small_run, preset_name, dtype):
    entry = small_run["results"]["presets"][preset_name][dtype]
    assert entry["n_train"] == LIMIT
    assert entry["epochs"] == EPOCHS
    for kind in ("reference", "torch", "keras"):
        fw = entry[kind]
        assert fw["error"] is None
        assert len(fw["test_accuracy"]) == EPOCHS
        assert all(0.0 <= a <= 1.0 for a in fw["test_accuracy"])
        assert fw["wall_s"] > 0
        assert len(fw["train_loss"]) == len(fw["test_loss"]) == len(fw["train_s"]) == EPOCHS
    for twin in ("torch", "keras"):
        vs = entry[twin]["vs_reference"]
        assert len(vs["param_rel_error"]) == len(vs["param_max_abs"]) == len(vs["differing_predictions"]) == EPOCHS
    statuses = {c["name"]: c["status"] for c in entry["acceptance"]["checks"]}
    assert "fail" not in statuses.values()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_float64_parity_figures_are_at_rounding_level(small_run, dtype):
    """The batched preset: identical accuracies, parameters within the twin policy (1e-12 / 1e-5)."""
    from oracles.compare import tolerance

    entry = small_run["results"]["presets"]["mnist-relu-batched"][dtype]
    for twin in ("torch", "keras"):
        assert entry[twin]["test_accuracy"] == entry["reference"]["test_accuracy"]
        assert max(entry[twin]["vs_reference"]["param_rel_error"]) <= tolerance("twin", dtype, "parameters")


def test_divergence_is_measured_for_per_sample_presets(small_run):
    div = small_run["results"]["presets"]["mnist-sigmoid-per-sample"]["float64"]["divergence"]
    assert set(div) == {"torch", "keras", J.NUDGED}
    for d in div.values():
        assert len(d["max_abs"]) == d["steps"] == DIVERGENCE_STEPS
        # The first steps agree to rounding level (a wrong gradient would differ by ~1e-3 at once).
        assert d["at_step"]["10"] < 1e-12
    assert "divergence" not in small_run["results"]["presets"]["mnist-relu-batched"]["float64"]


def test_report_has_every_section(small_run):
    text = (small_run["out"] / "report.md").read_text()
    for preset_name in PRESETS:
        assert f"## {preset_name}" in text
    for section in ("### float64", "### float32", "## Where the time goes", "## Environment", "saturation"):
        assert section in text
    for png in small_run["results"]["plots"]["mnist-sigmoid-per-sample"]:
        assert f"]({png[1]})" in text


def test_plots_in_worker_processes_are_the_same_files(small_run, tmp_path):
    """With workers > 1 the presets are plotted in spawned processes: the same names, titles and bytes
    as the in-process plots (here two presets: curves and a digit grid per dtype each)."""
    import dataclasses

    results, options, train_jobs, train_results = small_run["make_plots_args"]
    two = ("mnist-relu-batched", "mnist-cnn")
    subset = {**results, "presets": {name: results["presets"][name] for name in two}}
    parallel = dataclasses.replace(options, workers=2, out=tmp_path)
    files = V.make_plots(subset, parallel, train_jobs, train_results)
    assert {k: [list(f) for f in v] for k, v in files.items()} == {n: small_run["results"]["plots"][n] for n in two}
    names = [name for listed in files.values() for _, name in listed]
    assert len(names) == 6
    for name in names:
        assert (tmp_path / name).read_bytes() == (small_run["out"] / name).read_bytes(), name


def test_pngs_are_real_images(small_run):
    import matplotlib.image

    names = [name for files in small_run["results"]["plots"].values() for _, name in files]
    expected = {f"curves-{p}.png" for p in PRESETS} | {
        f"digits-{p}-{d}.png" for p in PRESETS for d in ("float64", "float32")
    }
    expected |= {"divergence-mnist-sigmoid-per-sample.png", "divergence-digits-sigmoid-per-sample.png"}
    assert expected <= set(names)
    for name in names:
        path = small_run["out"] / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 300 and image.shape[1] > 600
        assert image[..., :3].std() > 0.05  # not blank


def test_terminal_table_names_every_framework_and_check(small_run):
    out = small_run["stdout"]
    assert out.count("reference ") >= 8 and out.count("torch ") >= 8 and out.count("keras ") >= 8
    assert "PASS  parameters within the twin policy (1e-12)" in out
    assert "vs reference: within 1e-09 for" in out


# The validation can fail -----------------------------------------------------------------------


def _run(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().out


@pytest.fixture
def wrong_sgd(monkeypatch):
    """The reference's SGD takes a step 1e-6 too long: p <- p - lr (1 + 1e-6) g."""
    from reference import optimizers

    def update(self, name, p, g, owned=False):
        p -= self.lr * (1 + 1e-6) * g

    monkeypatch.setattr(optimizers.SGD, "update", update)


def test_broken_reference_fails_batched_parity(wrong_sgd, tmp_path, capsys):
    argv = ["validate", "--preset", "mnist-relu-batched", "--dtype", "float64", "--epochs", "1", "--limit", "512"]
    argv += ["--frameworks", "torch", "--workers", "1", "--out", str(tmp_path), "--no-progress", "--no-plots"]
    code, out = _run(argv, capsys)
    assert code == 1
    assert "NOT ACCEPTED" in out
    assert "FAIL mnist-relu-batched float64: parameters within the twin policy (1e-12): torch epoch 1:" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["acceptance"]["passed"] is False


def test_broken_reference_fails_the_agreement_stretch(wrong_sgd, tmp_path, capsys):
    argv = ["validate", "--preset", "mnist-sigmoid-per-sample", "--dtype", "float64", "--epochs", "1", "--limit", "300"]
    argv += ["--frameworks", "keras", "--workers", "1", "--out", str(tmp_path), "--no-progress", "--no-plots"]
    argv += ["--divergence-steps", "300"]
    code, out = _run(argv, capsys)
    assert code == 1
    assert "FAIL mnist-sigmoid-per-sample float64: trajectories agree to 1e-09 for >= " in out
    div = json.loads((tmp_path / "results.json").read_text())["presets"]["mnist-sigmoid-per-sample"]["float64"]
    assert div["divergence"]["keras"]["agree_steps"] < 20


def test_a_framework_that_raises_is_a_failure_with_its_reason(monkeypatch, tmp_path, capsys):
    from oracles import torch_twin

    def broken(self, *args, **kwargs):
        raise RuntimeError("deliberately broken for the test")

    monkeypatch.setattr(torch_twin.TorchTwin, "train_epoch", broken)
    argv = ["validate", "--preset", "mnist-relu-batched", "--dtype", "float32", "--epochs", "1", "--limit", "256"]
    argv += ["--frameworks", "torch", "--workers", "1", "--out", str(tmp_path), "--no-progress", "--no-plots"]
    code, out = _run(argv, capsys)
    assert code == 1
    assert "every framework ran: torch: " in out and "RuntimeError: deliberately broken for the test" in out


# Chunked training is the same training -----------------------------------------------------------


@pytest.mark.parametrize("kind", J.FRAMEWORKS)
@pytest.mark.parametrize("batch_size", [1, 7], ids=["per-sample", "batch7"])
def test_chunked_epoch_equals_one_call(kind, batch_size):
    spec = J.preset("mnist-relu-batched", dtype="float64", batch_size=batch_size)
    x, y, _, _ = J.load_data(spec, limit=150)
    order = J.orders_for(len(x), 1, seed=3)[0]
    params = J.init_params(spec, 3)
    whole = J.make_model(kind, spec, params, 3)
    loss_whole = whole.train_epoch(x, y, order, batch_size)
    chunked = J.make_model(kind, spec, params, 3)
    losses = []
    for chunk in J.epoch_chunks(order, batch_size, chunks=4):
        losses.append((chunked.train_epoch(x[chunk], y[chunk], np.arange(len(chunk)), batch_size), len(chunk)))
    for name, value in whole.get_params().items():
        np.testing.assert_array_equal(chunked.get_params()[name], value, err_msg=name)
    n_steps = -(-len(order) // batch_size)
    steps = [-(-n // batch_size) for _, n in losses]
    assert sum(steps) == n_steps
    combined = sum(loss * s for (loss, _), s in zip(losses, steps)) / n_steps
    assert_close(
        "mean loss", np.float64(combined), np.float64(loss_whole), "float64", "loss", names=("chunks", "whole")
    )


@pytest.mark.parametrize(("n", "batch_size", "chunks"), [(100, 1, 10), (100, 7, 3), (5, 32, 10), (129, 128, 4)])
def test_epoch_chunks_are_whole_batches_in_order(n, batch_size, chunks):
    order = np.random.default_rng(0).permutation(n)
    pieces = J.epoch_chunks(order, batch_size, chunks)
    np.testing.assert_array_equal(np.concatenate(pieces), order)
    assert all(len(p) % batch_size == 0 for p in pieces[:-1])
    assert len(pieces) <= chunks


def test_several_seeds_give_a_distribution(tmp_path, capsys):
    """--seeds 2: per framework the runs of each seed, mean and spread, a seeds table and plot."""
    argv = ["validate", "--preset", "digits-sigmoid-per-sample", "--dtype", "float64", "--seeds", "2", "--epochs", "1"]
    argv += ["--limit", "200", "--workers", "1", "--out", str(tmp_path), "--no-progress", "--divergence-steps", "50"]
    code, out = _run(argv, capsys)
    assert code == 0, out
    e = json.loads((tmp_path / "results.json").read_text())["presets"]["digits-sigmoid-per-sample"]["float64"]
    assert e["seeds"] == [0, 1]
    for kind in ("reference", "torch", "keras"):
        runs = e[kind]["runs"]
        assert [r["seed"] for r in runs] == [0, 1]
        finals = [r["test_accuracy"][-1] for r in runs]
        assert e[kind]["final_accuracy"]["values"] == finals
        assert e[kind]["final_accuracy"]["mean"] == pytest.approx(np.mean(finals))
        assert e[kind]["test_accuracy"] == pytest.approx([np.mean(finals)])
    assert runs[0]["test_accuracy"] != runs[1]["test_accuracy"] or runs[0]["train_loss"] != runs[1]["train_loss"]
    assert "Final test accuracy over the seeds:" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "seeds-digits-sigmoid-per-sample.png").stat().st_size > 10_000
    assert "seeds 0..1" in out and "mean" in out
