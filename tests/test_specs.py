"""Spec objects (BackboneSpec, DataSpec, CacheSpec): checked when made, written down and read back
once; fit and sweep dispatch their keyword arguments into them; and the size limits of issue 21:
no function in transfer/, heads/, datasets/ over 60 lines, no public function over 20 parameters."""
import ast
import json
from pathlib import Path

import pytest

import transfer
from transfer.data.spec import DataSpec
from transfer.errors import TransferError
from transfer.features.spec import CacheSpec
from transfer.graph.spec import BackboneSpec
from transfer.sweep.sweeping import sweep

ROOT = Path(__file__).resolve().parent.parent
DIGITS = "digits:5-9?per_class=10"
MAX_LINES, MAX_PARAMETERS = 60, 20


def _one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("make,named", [
    (lambda: BackboneSpec(""), "backbone=''"),
    (lambda: BackboneSpec("example:digits", cut=5), "cut=5"),
    (lambda: BackboneSpec("example:digits", cut=[]), "cut=[]"),
    (lambda: BackboneSpec("example:digits", inputs=[3]), "inputs=[3]"),
    (lambda: BackboneSpec("example:digits", feeds=["x"]), "feeds=['x']"),
    (lambda: BackboneSpec("example:digits", allow_ops=[1]), "allow_ops=[1]"),
    (lambda: BackboneSpec("example:digits", max_memory="lots"), "--max-memory 'lots'"),
    (lambda: BackboneSpec.of("example:digits", cuts="a"), "unknown keyword argument 'cuts'; valid: cut,"),
    (lambda: DataSpec("digits", validation_split=1.5), "validation_split=1.5 must be in [0, 1)"),
    (lambda: DataSpec("digits", per_class=0), "per_class=0 must be a positive integer"),
    (lambda: DataSpec("digits", seed=-1), "seed=-1 (--seed)"),
    (lambda: DataSpec.of("digits", datadir="x"), "unknown keyword argument 'datadir'; valid: data_dir,"),
    (lambda: CacheSpec(dtype="int8"), "cache dtype='int8' (--cache-dtype) must be one of float32, float16"),
    (lambda: CacheSpec(engine="cuda"), "engine='cuda' (--engine)"),
    (lambda: CacheSpec(runner="spark"), "runner='spark' (--runner)"),
    (lambda: CacheSpec(pool="mean"), "pool='mean' (--pool)"),
    (lambda: CacheSpec.of(dtyp="float16"), "unknown keyword argument 'dtyp'; valid: dtype,"),
])
def test_a_bad_value_is_refused_when_the_spec_is_made_in_one_line(make, named):
    with pytest.raises(TransferError) as error:
        make()
    assert named in _one_line(error)


def test_specs_round_trip_through_json():
    backbone = BackboneSpec("example:digits", cut=["block1_out", "block2_out"], signature="serving_default",
                            inputs="input:0", feeds={"training:0": False}, allow_ops=["Print"], max_memory="1G")
    assert backbone.cut == ("block1_out", "block2_out") and backbone.allow_ops == ("Print",)  # frozen: tuples
    assert BackboneSpec.from_dict(json.loads(json.dumps(backbone.to_dict()))) == backbone
    data = DataSpec(DIGITS, data_dir=Path("/tmp/d"), validation_split=0.25, per_class=3, seed=2,
                    preprocessing={"scale": "0..1"}, scale="-1..1")
    assert DataSpec.from_dict(json.loads(json.dumps(data.to_dict()))) == data
    assert BackboneSpec.of(backbone) == backbone and BackboneSpec.of(backbone, cut="x").cut == "x"


def test_data_in_memory_cannot_be_written_down():
    from transfer import datasets

    splits = datasets.load(DIGITS)
    with pytest.raises(TransferError, match="cannot be written down"):
        DataSpec(splits).to_dict()
    assert DataSpec(splits).load() is splits


def test_an_extraction_records_its_specs_once_and_is_made_again_from_them():
    from transfer.features.extraction import Extraction
    from transfer.features.inputs import open_extraction, open_inputs

    inputs = open_inputs(BackboneSpec("example:digits", cut="block1_out,block2_out"), DataSpec(DIGITS, seed=1),
                         batch_size=8)
    description = json.loads(json.dumps(Extraction(inputs).description()))
    assert set(description) == {"backbone", "data", "batch_size", "engine", "precision", "calibration_size", "pool",
                                "engine_dir"}
    assert BackboneSpec.from_dict(description["backbone"]).cut == tuple(c.spec for c in inputs.backbone.cuts)
    assert DataSpec.from_dict(description["data"]).seed == 1
    again = open_extraction(description)
    assert again.description() == description and again.outputs == Extraction(inputs).outputs


def test_open_inputs_takes_specs_or_their_keywords_the_same():
    from transfer.features.inputs import open_inputs

    by_spec = open_inputs(BackboneSpec("example:digits", cut="block2_out"), DataSpec(DIGITS, validation_split=0.3))
    by_keywords = open_inputs("example:digits", DIGITS, cut="block2_out", validation_split=0.3)
    assert by_spec.splits.identity == by_keywords.splits.identity
    assert [c.spec for c in by_spec.backbone.cuts] == [c.spec for c in by_keywords.backbone.cuts]
    with pytest.raises(TransferError) as error:
        open_inputs("example:digits", DIGITS, cuts="block2_out")
    assert _one_line(error).startswith("open_inputs: unknown keyword argument 'cuts'; valid: cut,")


@pytest.mark.parametrize("call,message", [
    (lambda: transfer.fit("example:digits", DIGITS, epoch=3), "fit: unknown keyword argument 'epoch'; valid: epochs,"),
    (lambda: transfer.fit("example:digits", DIGITS, cache_dri="c"),
     "fit: unknown keyword argument 'cache_dri'; valid: cache_dir,"),
    (lambda: transfer.fit("example:digits", DIGITS, pool="avg"), "fit: unknown keyword argument 'pool'"),
    (lambda: sweep("example:digits", DIGITS, momentum=[0.9]), "sweep: unknown keyword argument 'momentum'; valid: "),
    (lambda: sweep("example:digits", DIGITS, allow_op=["Print"]),
     "sweep: unknown keyword argument 'allow_op'; valid: allow_ops,"),
])
def test_an_unknown_keyword_to_fit_or_sweep_is_one_line_with_the_valid_names(call, message):
    with pytest.raises(TransferError) as error:
        call()
    text = _one_line(error)
    assert text.startswith(message)
    valid = text.split("; valid: ")[1].split(", ")
    for name in ("cut", "data_dir", "cache_dir", "engine"):  # every group of keywords is listed
        assert name in valid


def test_fit_and_sweep_check_their_specs_before_any_slow_work():
    with pytest.raises(TransferError, match=r"cache dtype='int8'"):
        transfer.fit("example:digits", DIGITS, cache_dir="c", cache_dtype="int8")
    with pytest.raises(TransferError, match=r"--max-memory 'lots'"):
        sweep("example:digits", DIGITS, max_memory="lots")


def _functions():
    """(where, name, lines, parameters, public) of every function in transfer/, heads/, datasets/."""
    found = []
    for folder in ("transfer", "heads", "datasets"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    a = node.args
                    parameters = (len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + (a.vararg is not None)
                                  + (a.kwarg is not None))
                    found.append((f"{path.relative_to(ROOT)}:{node.lineno}", node.name,
                                  node.end_lineno - node.lineno + 1, parameters, not node.name.startswith("_")))
    return found


def test_no_function_is_over_60_lines_and_no_public_function_over_20_parameters():
    functions = _functions()
    assert len(functions) > 500  # the whole of transfer/, heads/ and datasets/ was read
    by_name = {(where.split(":")[0], name): (lines, parameters) for where, name, lines, parameters, _ in functions}
    assert by_name[("transfer/training/fitting.py", "fit")][1] <= MAX_PARAMETERS  # the two this was about
    assert by_name[("transfer/sweep/sweeping.py", "sweep")][1] <= MAX_PARAMETERS
    long = [f"{where} {name}: {lines} lines" for where, name, lines, _, _ in functions if lines > MAX_LINES]
    wide = [f"{where} {name}: {parameters} parameters" for where, name, _, parameters, public in functions
            if public and parameters > MAX_PARAMETERS]
    assert not long and not wide, "; ".join(long + wide)
