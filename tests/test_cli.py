"""The ``pdiff-hf`` command line: ``--help`` without heavy imports, defaults, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pdiff_hf import cli

ROOT = Path(__file__).resolve().parents[1]


def test_help_builds_the_parser_without_heavy_imports():
    code = """
import contextlib, io, json, sys
from pdiff_hf.cli import build_parser, main
build_parser()
loaded = sorted(m for m in ("torch", "diffusers", "datasets", "transformers", "matplotlib") if m in sys.modules)
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main(["--help"])
    except SystemExit as e:
        code = e.code
loaded_after_help = sorted(m for m in ("torch", "diffusers", "datasets", "transformers", "matplotlib") if m in sys.modules)
print(json.dumps({"loaded": loaded, "after_help": loaded_after_help, "code": code, "help": out.getvalue()}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["loaded"] == [] and result["after_help"] == [], result
    assert result["code"] == 0
    for command in cli.COMMANDS:
        assert command in result["help"]


@pytest.mark.parametrize("command", cli.COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: pdiff-hf " + command in capsys.readouterr().out


def test_cli_error_lives_in_errors():
    from pdiff_hf.errors import CLIError, PDiffError

    assert cli.CLIError is CLIError and issubclass(CLIError, PDiffError)


def test_demo_flags_left_out_take_demo_config_defaults(tmp_path, monkeypatch):
    """The demo command leaves its defaults to DemoConfig (importing it at parser build time would be slow)."""
    from pdiff_hf.demos import demo

    seen = []

    class Stop(Exception):
        pass

    def validate(self):
        seen.append(self)
        raise Stop

    monkeypatch.setattr(demo.DemoConfig, "validate", validate)
    with pytest.raises(Stop):
        cli.main(["demo", "--output-dir", str(tmp_path)])
    assert seen[-1] == demo.DemoConfig(output_dir=str(tmp_path))
    with pytest.raises(Stop):
        cli.main(["demo", "--output-dir", str(tmp_path), "--seed", "3", "--no-novelty", "--selection", "classifier"])
    assert seen[-1] == demo.DemoConfig(output_dir=str(tmp_path), seed=3, novelty=False, selection="classifier")
    with pytest.raises(Stop):
        cli.main(["demo", "--output-dir", str(tmp_path), "--selection", "whole", "--branches", "8", "--trunk-epochs",
                  "10", "--branch-epochs", "5", "--recalibration-batches", "4", "--heldout-checkpoints", "0"])  # fmt: skip
    assert seen[-1] == demo.DemoConfig(
        output_dir=str(tmp_path), selection="whole", branches=8, trunk_epochs=10, branch_epochs=5,
        recalibration_batches=4, heldout_checkpoints=0,
    )


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_evaluate_unknown_task_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", "--pipeline", str(tmp_path), "--checkpoints", str(tmp_path), "--target", str(tmp_path),
                  "--task", "nope"])  # fmt: skip
    assert exit_info.value.code == 2
    assert "mnist1d" in capsys.readouterr().err


def test_underscore_flags_are_accepted_like_the_training_scripts():
    assert cli.dashed_flags(["demo", "--output_dir", "a_b", "--num_models=3", "-x", "--", "--keep_me"]) == [
        "demo",
        "--output-dir",
        "a_b",
        "--num-models=3",
        "-x",
        "--",
        "--keep_me",
    ]
    args = cli.build_parser().parse_args(cli.dashed_flags(["demo", "--output_dir", "out_dir", "--num_models", "7"]))
    assert (args.output_dir, args.num_models) == ("out_dir", 7)
