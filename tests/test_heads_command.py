"""`transfer heads`: every registered head with its description, options and defaults (issue 25, item 11)."""
import json

from transfer.cli.main import main
from transfer.heads import registry
from cli_checks import run_cli, user_error


def test_lists_every_head_with_the_options_fit_accepts(capsys):
    code, out, _ = run_cli(capsys, "heads")
    assert code == 0
    for name in registry.available():
        kind = registry.kind_of(name)
        assert f"{name}: {kind.description}" in out
        for option in kind.settable:
            assert f"  {option}=" in out  # each option a user may set, with its default
    assert "  hidden=256 " in out and "  norm=none " in out and "num_classes" not in out


def test_json_gives_names_defaults_and_traits(capsys):
    assert main(["heads", "m*", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert [head["name"] for head in described] == ["mlp", "multilayer"]
    multilayer = described[1]
    assert multilayer["traits"]["several_cuts"] is True
    options = {option["name"]: option for option in multilayer["options"]}
    assert options["penalty"]["default"] == "group_lasso" and not options["penalty"]["required"]
    assert sorted(options) == registry.kind_of("multilayer").settable


def test_a_pattern_that_matches_nothing_is_one_line(capsys):
    user_error(capsys, ["heads", "zz*"], r"no head matches 'zz\*'; registered heads: attention, conv, linear")
