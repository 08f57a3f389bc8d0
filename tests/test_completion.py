"""Shell completion (issue 25, item 11): what argcomplete offers for a partial word, driven in
this process through its environment variables as the shell's hook sets them, and once as the
shell runs it (no TensorFlow loaded)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_checks import run_cli, user_error
from transfer.cli import completion
from transfer.cli.main import build_parser

argcomplete = pytest.importorskip("argcomplete")  # the `completion` extra, which the test extra includes


class Finder(argcomplete.CompletionFinder):
    def _init_debug_stream(self):
        """argcomplete's own advice under pytest: its debug stream would take file descriptor 9."""


def completions(monkeypatch, line: str) -> list[str]:
    """What Tab offers after `line` (the cursor at its end; one choice gets a space after it)."""
    monkeypatch.setenv("_ARGCOMPLETE", "1")
    monkeypatch.setenv("COMP_LINE", line)
    monkeypatch.setenv("COMP_POINT", str(len(line)))
    monkeypatch.delenv("_ARGCOMPLETE_SHELL", raising=False)
    parser, output, exits = build_parser(), io.StringIO(), []
    completion.attach_completers(parser)
    Finder()(parser, output_stream=output, exit_method=exits.append)
    assert exits == [0]
    return sorted(output.getvalue().split("\013")) if output.getvalue() else []


def test_commands_and_flags(monkeypatch):
    assert completions(monkeypatch, "transfer s") == ["sweep "]
    assert completions(monkeypatch, "transfer c") == ["cache", "completion"]
    assert completions(monkeypatch, "transfer fit --thaw-") == ["--thaw-epochs", "--thaw-from", "--thaw-lr-scale",
                                                               "--thaw-weight-decay"]
    assert completions(monkeypatch, "transfer fit --optimizer ad") == ["adam", "adamw"]


def test_head_names(monkeypatch):
    assert completions(monkeypatch, "transfer fit --head m") == ["mlp", "multilayer"]
    assert completions(monkeypatch, "transfer sweep --heads linear,lo") == ["linear,logreg "]
    assert set(completion.HEADS) <= set(completion.head_names(""))


def test_cut_names_of_the_backbone_typed(monkeypatch):
    offered = completions(monkeypatch, "transfer fit --backbone example:digits --cut digits_resnet_1/block2_o")
    assert offered == ["digits_resnet_1/block2_out_1/Relu "]
    assert completions(monkeypatch, "transfer fit --backbone example:digits --cut ca") == ["candidates "]
    line = "transfer sweep --backbone example:digits --cuts resnet_features,digits_resnet_1/g"
    offered = completions(monkeypatch, line)
    assert offered == ["resnet_features,digits_resnet_1/gap_1/Mean "]


def test_graph_node_names_without_tensorflow(tmp_path):
    names = completion.graph_node_names("example:digits")
    assert "resnet_features" in names and "digits_resnet_1/block2_out_1/Relu" in names
    assert "image" not in names and not any(name.endswith("/reduction_indices") for name in names)  # input, Const
    (tmp_path / "junk.pb").write_bytes(b"\xff" * 64)
    (tmp_path / "model.keras").write_bytes(b"")
    for backbone in (None, "", str(tmp_path / "junk.pb"), str(tmp_path / "model.keras"), str(tmp_path / "no.pb"),
                     "example:nope"):
        assert completion.graph_node_names(backbone) == []


def test_completion_prints_the_shell_code(capsys):
    for shell in ("bash", "zsh"):
        code, out, err = run_cli(capsys, "completion", shell)
        assert code == 0 and "transfer" in out and "_ARGCOMPLETE" in out, err
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["completion", "fish"])
    assert exit_.value.code == 2
    assert "argument shell: invalid choice: 'fish' (choose from 'bash', 'zsh')" in capsys.readouterr().err


def test_completion_without_argcomplete_is_one_line(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "argcomplete", None)  # as if not installed
    err = user_error(capsys, ["completion", "bash"])
    assert err == ("transfer completion: error: shell completion needs argcomplete; install it: "
                   "pip install 'transfer[completion]'")


@pytest.mark.slow
def test_a_tab_press_in_the_shell_answers_without_tensorflow(tmp_path):
    out = tmp_path / "offered"
    line = "transfer fit --backbone example:digits --head lin"
    env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE_STDOUT_FILENAME": str(out)}
    result = subprocess.run([sys.executable, "-X", "importtime", str(Path(sys.executable).parent / "transfer")],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.read_text() == "linear "
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time")}
    assert "argcomplete" in imported and "tensorflow" not in imported
