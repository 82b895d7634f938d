"""The `bprop` command line: options, usage errors (exit 2), the `check` wiring to grading.cli."""

from __future__ import annotations

import sys

import pytest

from bprop import cli


def test_help_lists_both_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "validate" in out and "check" in out


def test_validate_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["validate", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in (
        "--preset",
        "--dtype",
        "--epochs",
        "--seeds",
        "--seed",
        "--frameworks",
        "--limit",
        "--out",
        "--workers",
    ):
        assert option in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["validate", "--preset", "nope"], "invalid choice: 'nope'"),
        (["validate", "--dtype", "float16"], "invalid choice: 'float16'"),
        (["validate", "--epochs", "0"], "expected at least 1, got 0"),
        (["validate", "--limit", "ten"], "expected a whole number, got 'ten'"),
        (["validate", "--frameworks", "torch,jax"], "expected a comma-separated subset of reference,torch,keras"),
        (["validate", "--seeds", "2", "--seed", "3"], "not allowed with argument"),
    ],
    ids=["preset", "dtype", "epochs", "limit", "frameworks", "seeds-and-seed"],
)
def test_bad_options_exit_2_with_the_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_negative_seed_exits_2(capsys, tmp_path):
    assert cli.main(["validate", "--seed", "-1", "--out", str(tmp_path)]) == 2
    assert "--seed: expected seeds >= 0, got [-1]" in capsys.readouterr().err


def test_negative_divergence_steps_exit_2(capsys, tmp_path):
    code = cli.main(["validate", "--divergence-steps", "-1", "--out", str(tmp_path)])
    assert code == 2
    assert "--divergence-steps: expected >= 0, got -1" in capsys.readouterr().err


def test_options_reach_the_run(monkeypatch, tmp_path):
    seen = {}

    def fake_run(options):  # the CLI's translation of argv, not the validation itself
        seen["options"] = options
        return 0

    monkeypatch.setattr("bprop.validate.run", fake_run)
    monkeypatch.setattr(cli, "_check_data", lambda options: None)
    argv = ["validate", "--preset", "mnist-relu-batched", "--preset", "mnist-relu-deep", "--dtype", "float32"]
    argv += ["--seeds", "3", "--epochs", "2", "--limit", "100", "--frameworks", "torch", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    o = seen["options"]
    assert o.presets == ["mnist-relu-batched", "mnist-relu-deep"]
    assert o.dtypes == ["float32"] and o.seeds == [0, 1, 2] and o.epochs == 2 and o.limit == 100
    assert o.frameworks == ("torch",)
    assert o.command.startswith("bprop validate --preset mnist-relu-batched")


def test_defaults_are_every_preset_both_dtypes_seed_0(monkeypatch):
    from reference.spec import PRESETS

    seen = {}
    monkeypatch.setattr("bprop.validate.run", lambda options: seen.setdefault("o", options) and 0)
    monkeypatch.setattr(cli, "_check_data", lambda options: None)
    cli.main(["validate"])
    o = seen["o"]
    assert o.presets == list(PRESETS) and o.dtypes == ["float64", "float32"] and o.seeds == [0]
    assert o.epochs is None and o.limit is None and str(o.out) == "bprop-report" and o.workers == 2


def test_missing_framework_exits_2_naming_it(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert cli.main(["validate", "--limit", "10"]) == 2
    err = capsys.readouterr().err
    assert "torch not installed" in err and "--frameworks reference,keras" in err


def test_check_is_wired_to_grading(capsys):
    pytest.importorskip("grading.cli")
    with pytest.raises(SystemExit) as exc:
        cli.main(["check", "--help"])
    assert exc.value.code == 0
    assert "--assignment" in capsys.readouterr().out


def test_check_without_grading_exits_2_with_a_message(monkeypatch, capsys):
    import grading

    monkeypatch.setitem(sys.modules, "grading.cli", None)  # import grading.cli now raises ImportError
    monkeypatch.delattr(grading, "cli", raising=False)
    assert cli.main(["check", "anything.py"]) == 2
    assert "bprop check: the grading package is not available" in capsys.readouterr().err
