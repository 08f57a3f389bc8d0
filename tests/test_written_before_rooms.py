"""What users already have on disk keeps working (issue 21): run directories and cache entries
written before the modules moved into subpackages (`tests/fixtures/written_before_rooms`)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import transfer  # noqa: F401  (pins the Keras backend; registers the Keras classes)
import keras

from transfer.cli.main import main

WRITTEN = Path(__file__).parent / "fixtures" / "written_before_rooms"
WHERE_WRITTEN = Path("/tmp/transfer-compat-fixture")  # cache keys hold the data file's absolute path


@pytest.mark.parametrize("run", ["run-linear", "run-thaw"])
def test_an_old_run_directory_loads_and_predicts_the_same(run, tmp_path, capsys):
    copied = shutil.copytree(WRITTEN / run, tmp_path / run)
    model = keras.models.load_model(copied / "model.keras", safe_mode=True)
    assert model.predict(np.load(WRITTEN / "probe.npy"), verbose=0).shape == (6, 5)
    assert main(["predict", str(copied), str(WRITTEN / "probe.npy"), "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    expected = json.loads((WRITTEN / run / "predictions-of-probe.json").read_text())
    assert [[top["class"] for top in row["top"]] for row in predicted] == \
        [[top["class"] for top in row["top"]] for row in expected]
    np.testing.assert_allclose([[top["probability"] for top in row["top"]] for row in predicted],
                               [[top["probability"] for top in row["top"]] for row in expected], atol=1e-5)


def test_an_old_cache_keeps_its_keys_and_is_not_extracted_again(tmp_path):
    from transfer.features.inputs import open_inputs

    if WHERE_WRITTEN.exists():
        shutil.rmtree(WHERE_WRITTEN)
    WHERE_WRITTEN.mkdir(parents=True)
    shutil.copy(WRITTEN / "digits40.npz", WHERE_WRITTEN)
    cache = shutil.copytree(WRITTEN / "cache", tmp_path / "cache")
    before = {p.relative_to(cache): p.read_bytes() for p in cache.rglob("*") if p.is_file()}
    try:
        entries = open_inputs("example:digits", f"npz:{WHERE_WRITTEN / 'digits40.npz'}", cut="block2_out").extract(
            cache, progress=False)
    finally:
        shutil.rmtree(WHERE_WRITTEN)
    assert sorted(e.key for listed in entries.values() for e in listed) == sorted(
        p.name for p in (WRITTEN / "cache").iterdir())
    after = {p.relative_to(cache): p.read_bytes() for p in cache.rglob("*")
             if p.is_file() and p.name not in (".lock", ".used")}
    assert after == before  # nothing extracted again, nothing rewritten (only the entries' locks and use marks)
