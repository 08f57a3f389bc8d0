"""What every CLI test asserts of a user error, in one place: exit 2, one line on stderr that
names the problem, no traceback, no raw control character; `fit` also leaves no run directory."""
from __future__ import annotations

import re

from transfer.cli.main import main

RAW = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # a control character other than a line's end
DIGITS = "digits:5-9?per_class=10"


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """`transfer ARGV` in this process: (exit code, stdout, stderr)."""
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def user_error(capsys, argv, pattern: str | None = None) -> str:
    """The one line `transfer ARGV` fails with as a user error (matching `pattern`, if given)."""
    code, out, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not RAW.search(err.strip()), err
    if pattern is not None:
        assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def fit_error(capsys, tmp_path, *extra, backbone="example:digits", data=DIGITS) -> str:
    """`transfer fit` with `extra` fails as a user error, and no run directory is left."""
    out = tmp_path / "bad_run"
    err = user_error(capsys, ["fit", "--backbone", backbone, "--data", data, "--epochs", "1", "--out", out, *extra])
    assert not out.exists() and not out.with_name("bad_run.partial").exists()
    return err
