"""What a new user types (issue 25): the README's commands parse as a shell would split them,
documented values such as `--scale -1..1` can be typed as documented, mistakes that need no graph
are said before TensorFlow loads, `python -m transfer` works, and Ctrl-C is one line."""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from transfer.cli.main import build_parser, joined_dash_values
from cli_checks import DIGITS, user_error

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "transfer"


def readme_commands() -> list[str]:
    """Every `transfer ...` command in the README's code blocks, continuation lines joined,
    comments and a leading `pip install ... &&` dropped; `a|b` alternatives are prose, skipped."""
    commands = []
    for block in re.findall(r"```[^\n]*\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("&&")[-1].strip()
            words = shlex.split(line, comments=True) if line.startswith("transfer ") else []
            if words and not any("|" in word or "…" in word for word in words):
                commands.append(words[1:])
    return commands


def imported_modules(stderr: str) -> list[str]:
    """The modules `python -X importtime` says it imported."""
    return [line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time")]


def test_every_readme_command_parses_as_typed():
    commands = readme_commands()
    assert len(commands) > 30  # the README's examples, not an empty list
    parser = build_parser()
    for argv in commands:
        parser.parse_args(joined_dash_values(argv))  # argparse exits (SystemExit) on anything it refuses


def test_a_value_that_starts_with_a_dash_is_typed_as_documented():
    """README: "add `--scale -1..1` with `--inputs Mul`" (argparse alone reads -1..1 as a flag)."""
    argv = ["fit", "--backbone", "m.pb", "--inputs", "Mul", "--scale", "-1..1", "--data", "photos/"]
    args = build_parser().parse_args(joined_dash_values(argv))
    assert args.scale == "-1..1" and args.inputs == "Mul"
    assert joined_dash_values(["--lr", "-0.5", "--json", "--epochs", "3"]) == ["--lr=-0.5", "--json", "--epochs", "3"]
    assert joined_dash_values(["--scale=-1..1", "--thaw", "2"]) == ["--scale=-1..1", "--thaw", "2"]


def test_scale_typed_as_documented_reaches_the_preprocessing(capsys):
    err = user_error(capsys, ["fit", "--backbone", "example:digits", "--data", DIGITS, "--scale", "-1..2"])
    assert "-1..2" in err and "expected one argument" not in err  # the value's own check, not argparse's


@pytest.mark.parametrize("extra,pattern", [
    (["--head", "lineaer"], r"unknown head 'lineaer'; did you mean 'linear'; registered heads: attention, conv, "),
    (["--export", "savedmodel,onnx"], r"export format='onnx' \(--export\) must be one of savedmodel, pb, tflite$"),
    (["--data", "/no/such/photos"], r"data directory '/no/such/photos' does not exist \(valid specs: folder:PATH"),
    (["--data", "folder:/no/such/photos"], r"^transfer fit: error: data directory '/no/such/photos' does not exist$"),
    (["--data", "npz:/no/such.npz"], r"npz file '/no/such.npz' does not exist$"),
    (["--data", "ftp:photos"], r"unknown data scheme 'ftp' in 'ftp:photos'; valid: folder:PATH"),
    (["--data", "digits?per_klass=3"], r"unknown option 'per_klass' in 'digits\?per_klass=3'; valid: per_class"),
    (["--out", "."], r"run directory '\.' already exists; choose another --out"),
])
def test_mistakes_without_a_graph_are_said_before_tensorflow_loads(extra, pattern, tmp_path):
    argv = ["fit", "--backbone", "example:digits", "--data", DIGITS, "--epochs", "1", *extra]
    result = subprocess.run([sys.executable, "-X", "importtime", str(SCRIPT), *argv], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    imported = imported_modules(result.stderr)
    said = [line for line in result.stderr.splitlines() if not line.startswith("import time")]
    assert result.returncode == 2 and len(said) == 1 and re.search(pattern, said[0]), result.stderr[-2000:]
    assert imported and not [name for name in imported if name.split(".")[0] in ("tensorflow", "keras")]


def test_the_early_head_check_knows_every_registered_head():
    """`transfer.choices.HEADS` (read before TensorFlow) lists exactly the heads the registry has."""
    from transfer import heads
    from transfer.choices import HEADS

    assert sorted(HEADS) == sorted(heads.registry._HEADS)


def test_python_dash_m_transfer_is_the_command(tmp_path):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "transfer", "fit", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "multilayer" in " ".join(result.stdout.split()), result.stderr[-2000:]
    imported = imported_modules(result.stderr)
    assert imported and "tensorflow" not in {name.split(".")[0] for name in imported}


@pytest.mark.slow
def test_ctrl_c_during_a_fit_is_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    worker = subprocess.Popen([str(SCRIPT), "fit", "--backbone", "example:digits", "--data", DIGITS, "--epochs", "500",
                               "--patience", "0", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in worker.stdout:  # wait until it trains, then press Ctrl-C
            if line.startswith("Epoch 2/"):
                break
        time.sleep(0.5)
        worker.send_signal(signal.SIGINT)
        _, err = worker.communicate(timeout=120)
    finally:
        worker.kill()
    assert worker.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == "transfer fit: interrupted; nothing written" and "Traceback" not in err
    assert not out.exists() and not out.with_name("run.partial").exists()


def test_one_comma_grammar_for_fit_and_sweep():
    """A comma joins one setting's values for a list option and separates a sweep's choices for
    any other; repeating --head-opt adds choices (issue 25, item 5)."""
    from transfer.cli.arguments import fit_head_options, key_value, sweep_head_options
    from transfer.cli.sweep_command import _list_valued

    typed = [key_value(text) for text in ("hidden=64,32", "pooling=avg,flatten")]
    assert fit_head_options(typed) == {"hidden": [64, 32], "pooling": ["avg", "flatten"]}  # the head refuses this list
    mlp = _list_valued(["mlp", "linear"])
    assert sweep_head_options(typed, mlp) == {"hidden": [[64, 32]], "pooling": ["avg", "flatten"]}
    again = typed + [key_value("hidden=128")]
    assert sweep_head_options(again, mlp) == {"hidden": [[64, 32], 128], "pooling": ["avg", "flatten"]}
    assert sweep_head_options([key_value("hidden=[[64],[128,64]]")], mlp) == {"hidden": [[64], [128, 64]]}
    assert sweep_head_options([key_value("strength=0.001,0.01")], _list_valued(["logreg", "multilayer"])) == {
        "strength": [0.001, 0.01]}


def test_a_repeated_option_in_fit_is_one_line_before_tensorflow(capsys):
    err = user_error(capsys, ["fit", "--backbone", "example:digits", "--data", DIGITS, "--head-opt", "hidden=64",
                              "--head", "mlp", "--head-opt", "hidden=128"])
    assert err == ("transfer fit: error: --head-opt hidden is given twice (64 and 128); a fit trains one setting: "
                   "give it once (alternatives are for transfer sweep)")


def test_every_flag_of_every_command_says_what_it_does():
    """Issue 25, "Smaller": `--top-k` and `--batch-size` had an empty help on some commands."""
    import argparse

    def flags(parser, path):
        for action in parser._actions:
            if action.nargs == argparse.PARSER:
                for name, sub in action.choices.items():
                    yield from flags(sub, [*path, name])
            else:
                yield " ".join(path), action

    silent = [(path, action.option_strings or action.dest) for path, action in flags(build_parser(), [])
              if not (action.help or "").strip()]
    assert not silent


def test_one_epoch_is_said_in_the_singular():
    from transfer.training.keras_training import TrainingLog

    assert TrainingLog({"loss": [1.0]}).summary() == "trained 1 epoch"
    assert TrainingLog({"loss": [1.0, 0.5]}, stopped_early=True).summary() == "trained 2 epochs (stopped by a callback)"


def test_an_error_raised_while_ctrl_c_unwinds_still_reads_as_an_interrupt():
    """TensorFlow's device scope, left mid-`model.fit` by Ctrl-C, can fail in its exit and hide the
    KeyboardInterrupt: the CLI still says `interrupted` (exit 130), not a traceback."""
    from transfer.cli.main import _while_interrupted

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("Exiting device scope without proper scope nesting")  # noqa: B904 (as TF does)
    except RuntimeError as error:
        assert _while_interrupted(error)
    assert not _while_interrupted(RuntimeError("a real failure"))
