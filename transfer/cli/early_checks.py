"""Mistakes said before TensorFlow loads (~8 s on this machine): a data path that does not exist,
an unknown data scheme, an existing run directory, an unknown export format or head name. What
needs the graph or a head's class (its options, a cut) is checked after, by the API itself; these
checks only say the same thing sooner, with the same words.
"""
from __future__ import annotations

from importlib.metadata import entry_points

from transfer.choices import EXPORT_FORMATS, HEAD_ENTRY_POINTS, HEADS
from transfer.cli.arguments import fit_head_options
from transfer.data_specs import check_spec
from transfer.errors import check_choice, unknown_head
from transfer.training.reporting import check_new_run_dir



def check_before_tensorflow(args) -> None:
    """Every check of `args` that needs neither TensorFlow nor a file's content."""
    if getattr(args, "data", None):
        check_spec(args.data)
    if args.command == "fit":
        fit_head_options(args.head_opt)  # a key given twice
    if args.command in ("fit", "evaluate") and args.out:  # (a sweep's OUT.partial resumes: it checks its --out itself)
        check_new_run_dir(args.out)
    for name in getattr(args, "export", None) or ():
        check_choice("export format", name, EXPORT_FORMATS, flag="--export")
    named = [args.head] if getattr(args, "head", None) else getattr(args, "heads", None) or []
    for name in named:
        check_head_name(name)


def check_head_name(name: str) -> None:
    """A plain head name must be built in or an entry point; `module:Class` is imported later."""
    if ":" in name or name in HEADS:
        return
    plugins = {point.name for point in entry_points(group=HEAD_ENTRY_POINTS)}
    if name not in plugins:
        raise unknown_head(name, sorted({*HEADS, *plugins}))
