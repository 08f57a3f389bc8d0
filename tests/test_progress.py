"""What `fit`, `sweep` and `extract` say while they work (issue 25, item 8): with `--json`, stdout
holds only the JSON and the stage lines, progress and epochs go to stderr; `-v` adds detail lines
(each cut's tensor and shape, cache entries' keys and folders, the engine, the training settings)."""
from __future__ import annotations

import json
import re

import pytest

from cli_checks import DIGITS, run_cli

FIT = ["fit", "--backbone", "example:digits", "--cut", "block2_out", "--data", DIGITS, "--epochs", "2",
       "--export", "none"]


def test_fit_json_keeps_stdout_for_the_json_and_says_the_rest_on_stderr(capsys, tmp_path):
    code, out, err = run_cli(capsys, *FIT, "--out", tmp_path / "run", "--json")
    assert code == 0, err
    assert json.loads(out)["run_dir"] == str(tmp_path / "run")  # stdout is the JSON, nothing else
    assert re.search(r"^data: digits:5-9\?per_class=10: 5 classes; 50 train", err, re.M), err
    assert re.search(r"^backbone: example:digits, cut at block2_out", err, re.M) and "Epoch 2/2" in err
    assert "  cut block2_out:" not in err  # detail lines only with -v


@pytest.mark.slow
def test_verbose_adds_detail_lines(capsys, tmp_path):
    code, out, err = run_cli(capsys, *FIT, "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache", "-v")
    assert code == 0, err
    assert re.search(r"^  cut block2_out: tensor digits_resnet_1/block2_out_1/Relu:0, shape \(4, 4, 32\) float32$",
                     out, re.M), out
    assert re.search(r"^  engine: TensorFlow ", out, re.M)
    keys = re.findall(r"^  cache entry ([0-9a-f]{32}) \((train|validation|test), .*\): (\S+)$", out, re.M)
    assert [role for _, role, _ in keys] == ["train", "validation", "test"]
    assert all(folder.endswith(key) for key, _, folder in keys)
    assert re.search(r"^  extracted the train split in \d+\.\d s", out, re.M)
    assert re.search(r"^  training: adam at lr 0\.001, batch size 32, up to 2 epochs, patience 5; \d+ weights", out,
                     re.M)
    code, out, _ = run_cli(capsys, *FIT, "--out", tmp_path / "again", "--cache-dir", tmp_path / "cache", "--verbose")
    assert code == 0 and re.search(r"^features: the train split from the cache \(entry [0-9a-f]{12}\)$", out, re.M)
    assert re.search(r"^  cache entry [0-9a-f]{32} \(train, ", out, re.M)


def test_quiet_and_verbose_together_are_refused(capsys, tmp_path):
    from transfer.cli.main import main

    with pytest.raises(SystemExit) as exit_:  # argparse's own error: usage, then the line
        main([*FIT, "--out", str(tmp_path / "run"), "-q", "-v"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.strip().splitlines()[-1] == (
        "transfer fit: error: argument --verbose/-v: not allowed with argument --quiet/-q")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_sweep_json_keeps_stdout_for_the_json(capsys, tmp_path):
    code, out, err = run_cli(capsys, "sweep", "--backbone", "example:digits", "--cut", "block2_out", "--data", DIGITS,
                             "--heads", "linear", "--lr", "0.01,0.001", "--epochs", "2", "--export", "none",
                             "--cache-dir", tmp_path / "cache", "--out", tmp_path / "sweep", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["run_dir"] == str(tmp_path / "sweep") and len(result["rows"]) == 2
    assert re.search(r"^features: extracting the train split", err, re.M)
    assert re.search(r"^\[2/2\] linear lr=", err, re.M) and re.search(r"^best: linear ", err, re.M), err


def test_extract_json_keeps_stdout_for_the_json(capsys, tmp_path):
    code, out, err = run_cli(capsys, "extract", "--backbone", "example:digits", "--cut", "block2_out", "--data",
                             DIGITS, "--cache-dir", tmp_path / "cache", "--json", "-v")
    assert code == 0, err
    assert {row["role"] for row in json.loads(out)} == {"train", "validation", "test"}
    assert re.search(r"^features: extracting the test split", err, re.M) and "  cache entry " in err
