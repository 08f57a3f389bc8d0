"""`transfer extract` and `transfer cache ls|verify|rm`: the feature cache. `cache` reads files
only and imports no TensorFlow, so it answers at once."""
from __future__ import annotations

import argparse
import json
import sys
import time

from transfer.cli.arguments import (CACHE_HELP, add_cache_arguments, add_input_arguments, add_output_arguments,
                                     add_pool_argument, backbone_spec, command, data_spec, progress_streams, table)
from transfer.errors import TransferError
from transfer.features.spec import CacheSpec
from transfer.graph.memory import format_size, parse_size
from transfer.text import printable

CORRUPT_CACHE = 3  # `cache verify` found corrupt shards: not a bug (1) nor a user error (2)
EXTRACT_EXAMPLES = """examples:
  transfer extract --backbone example:digits --cut block2_out --data digits:5-9 --cache-dir features/
  transfer extract --backbone model.pb --cut resnet_features --data photos/ --cache-dtype float16
  transfer extract --backbone model.pb --cut resnet_features --data photos/ --engine onnxruntime
  transfer extract --backbone model.pb --cut candidates --pool avg --data photos/   # every cut, one pass
  transfer extract --backbone model.pb --data photos/ --runner beam \\
      --beam-option direct_num_workers=2 --beam-option direct_running_mode=multi_processing
  transfer extract --backbone /shared/model.pb --data /shared/photos/ --cache-dir /shared/features \\
      --runner beam --beam-option runner=DaskRunner --beam-option dask_client_address=scheduler:8786
  transfer extract --backbone model.pb --data photos/ --cache-dir gs://bucket/features --runner beam \\
      --beam-option runner=DataflowRunner --beam-option project=my-project --beam-option region=europe-west1"""
CACHE_EXAMPLES = """examples:
  transfer cache ls --cache-dir features/      # most recently used first, with the total size
  transfer cache verify
  transfer cache rm 9c466a7488d741d40711d4deadac0808
  transfer cache prune --max-size 10G          # least recently used first, down to 10 GiB
  transfer cache prune --older-than 30d --dry-run"""


def add(commands) -> None:
    _add_extract(commands)
    _add_cache(commands)


def _add_extract(commands) -> None:
    extract = command(commands, "extract", run_extract, "extract features once into the feature cache",
                      EXTRACT_EXAMPLES)
    add_input_arguments(extract)
    add_cache_arguments(extract, CACHE_HELP)
    extract.add_argument("--batch-size", type=int, default=32, help="examples per backbone call (default 32)")
    extract.add_argument("--shard-size", type=int, metavar="N", help="examples per shard (default: ~64 MiB)")
    add_pool_argument(extract)
    add_output_arguments(extract, "print the entries as JSON")


def _add_cache(commands) -> None:
    cache = command(commands, "cache", run_cache, "list, verify or remove feature-cache entries", CACHE_EXAMPLES)
    actions = cache.add_subparsers(dest="action", required=True, metavar="ACTION")
    summaries = (("ls", "list entries, most recently used first"),
                 ("verify", f"check every shard's checksum (exit {CORRUPT_CACHE} if any is corrupt)"),
                 ("rm", "remove the given entries, or all with --all"),
                 ("prune", "remove the least recently used entries: down to --max-size, or unused for --older-than"))
    for action, summary in summaries:
        sub = actions.add_parser(action, help=summary, description=summary)
        if action == "prune":
            sub.add_argument("--max-size", type=_size, metavar="SIZE", help="keep at most this much, e.g. 10G")
            sub.add_argument("--older-than", type=_age, metavar="AGE", help="remove entries unused for this long, "
                             "e.g. 30d, 12h, 2w")
            sub.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
        else:
            sub.add_argument("keys", nargs="*", metavar="KEY", help="entries (default: all" +
                             ("; rm needs --all for that)" if action == "rm" else ")"))
        if action == "rm":
            sub.add_argument("--all", action="store_true", help="remove every entry of the cache directory")
        sub.add_argument("--cache-dir", metavar="DIR", help=CACHE_HELP)
        sub.add_argument("--json", action="store_true", help="print the entries as JSON")


def _size(text: str) -> int:
    try:
        return parse_size(text, flag="--max-size")
    except TransferError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--max-size ")) from None


def _age(text: str) -> float:
    from transfer.features.cache_pruning import parse_age

    try:
        return parse_age(text)
    except TransferError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--older-than ")) from None


def run_extract(args) -> int:
    from transfer.features.inputs import open_inputs

    with progress_streams(args):
        inputs = open_inputs(backbone_spec(args), data_spec(args), batch_size=args.batch_size, engine=args.engine,
                             precision=args.precision, calibration_size=args.calibration_size)
        entries = inputs.extract(CacheSpec(args.cache_dir, args.cache_dtype, runner=args.runner, pool=args.pool),
                                 shard_size=args.shard_size, progress=not args.quiet)
    rows = [entry_row(entry) for listed in entries.values() for entry in listed]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        from transfer.features.cache import FeatureCache

        print(f"cache {printable(FeatureCache(args.cache_dir).root)}:")
        print(_entrytable(rows))
    return 0


def run_cache(args) -> int:
    from transfer.features.cache import FeatureCache

    cache = FeatureCache(args.cache_dir)
    if args.action == "prune":
        return _prune(cache, args)
    if args.action == "rm" and not args.keys and not args.all:
        raise TransferError(f"cache rm: give the keys of the entries to remove (`transfer cache ls` lists them), "
                            f"or --all to remove every entry of {cache.root}")
    entries = [cache.open(key) for key in args.keys] if args.keys else cache.entries()
    if args.action == "rm":
        for entry in entries:
            cache.remove(entry.key)
            print(f"removed {printable(entry.key)}")
        return 0
    from transfer.features.cache_pruning import last_used

    entries.sort(key=last_used, reverse=True)  # by the time itself: the shown one is to the minute
    rows = [entry_row(entry, verify=args.action == "verify") for entry in entries]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        print(_entrytable(rows))
        print(f"{len(rows)} entries, {format_size(sum(row['bytes'] for row in rows))} in {printable(cache.root)}")
    else:
        print(f"no cache entries in {printable(cache.root)}")
    bad = [row for row in rows if row.get("bad_shards")]
    for row in bad:
        print(f"entry {printable(row['key'])}: corrupt or missing shard(s) {row['bad_shards']} "
              f"({printable('; '.join(row['problems'].values()))}); the next extract or fit with this cache "
              "re-extracts them", file=sys.stderr)
    return CORRUPT_CACHE if bad else 0


def _prune(cache, args) -> int:
    from transfer.features.cache_pruning import RECENT, prune

    if args.max_size is None and args.older_than is None:
        raise TransferError("cache prune: give --max-size SIZE (e.g. 10G) or --older-than AGE (e.g. 30d), or both")
    removed, spared = prune(cache, max_bytes=args.max_size, older_than=args.older_than, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"removed": [{"key": r.key, "bytes": r.bytes, "last_used": _when(r.last_used)}
                                      for r in removed], "spared": spared, "dry_run": args.dry_run}, indent=2))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for r in removed:
        print(f"{verb} {printable(r.key)} ({format_size(r.bytes)}, last used {_when(r.last_used)})")
    left = sum(entry.size_bytes() for entry in cache.entries())
    print(f"{verb} {len(removed)} entries, {format_size(sum(r.bytes for r in removed))}; "
          f"{format_size(left)} left in {printable(cache.root)}" + (" (before pruning)" if args.dry_run else ""))
    if spared:
        print(f"kept {len(spared)} entries in use (being extracted, or used in the last {RECENT // 60} minutes)")
    return 0


def _when(seconds: float) -> str:
    """A time as `cache ls` shows it; `-` where none is kept (a remote cache)."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds)) if seconds else "-"


def entry_row(entry, verify: bool = False) -> dict:
    from transfer.features.cache_pruning import last_used

    recipe, size = entry.manifest.get("ingredients", {}), entry.size_bytes()
    shapes = [list(shape) for shape in entry.feature_shapes]
    row = {"key": entry.key, "path": str(entry.path), "role": entry.manifest.get("role"), "examples": entry.count,
           "shape": shapes[0] if len(shapes) == 1 else shapes or None, "dtype": entry.manifest.get("dtype"),
           "pool": recipe.get("pool", "none"), "engine": recipe.get("engine", "tf"),
           "precision": recipe.get("precision", "fp32"),
           "shards": len(entry.manifest["shards"]), "complete": entry.complete,
           "megabytes": round(size / 1e6, 2), "bytes": size,
           "cut": recipe.get("backbone", {}).get("cut"), "data": recipe.get("data", {}).get("source"),
           "backbone": entry.manifest.get("backbone_source") or entry.manifest.get("backbone_fingerprint", "")[:12],
           "last_used": _when(last_used(entry))}
    if verify:
        problems = entry.shard_problems()
        row["bad_shards"], row["problems"] = list(problems), {str(index): text for index, text in problems.items()}
    return row


def _entrytable(rows) -> str:
    header = ("key", "last used", "role", "examples", "shape", "dtype", "MB", "backbone", "cut", "data", "pool",
              "engine", "status")
    lines = [header] + [(r["key"], r["last_used"], str(r["role"]), str(r["examples"]), str(tuple(r["shape"] or ())),
                         str(r["dtype"]), f"{r['megabytes']:.1f}", _short(r["backbone"]), str(r["cut"]),
                         _short(r["data"]), r["pool"],
                         str(r["engine"]) + ("" if r["precision"] == "fp32" else f" {r['precision']}"),
                         ("CORRUPT " + str(r["bad_shards"])) if r.get("bad_shards") else
                         ("ok" if r["complete"] else "partial")) for r in rows]
    return table(lines)


def _short(value, width: int = 32) -> str:
    """A long path or data spec, its end kept (where names differ)."""
    text = str(value)
    return text if len(text) <= width else "…" + text[-(width - 1):]
