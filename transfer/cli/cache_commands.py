"""`transfer extract` and `transfer cache ls|verify|rm`: the feature cache. `cache` reads files
only and imports no TensorFlow, so it answers at once."""
from __future__ import annotations

import json
import sys

from transfer.cli.arguments import (CACHE_HELP, add_cache_arguments, add_input_arguments, add_pool_argument, command,
                                     backbone_spec, data_spec, table)
from transfer.errors import TransferError
from transfer.text import printable

CORRUPT_CACHE = 3  # `cache verify` found corrupt shards: not a bug (1) nor a user error (2)
EXTRACT_EXAMPLES = """examples:
  transfer extract --backbone example:digits --cut block2_out --data digits:5-9 --cache-dir features/
  transfer extract --backbone model.pb --cut resnet_features --data photos/ --cache-dtype float16
  transfer extract --backbone model.pb --cut resnet_features --data photos/ --engine onnxruntime
  transfer extract --backbone model.pb --cut candidates --pool avg --data photos/   # every cut, one pass
  transfer extract --backbone model.pb --data photos/ --runner beam \
      --beam-option direct_num_workers=2 --beam-option direct_running_mode=multi_processing
  transfer extract --backbone /shared/model.pb --data /shared/photos/ --cache-dir /shared/features \
      --runner beam --beam-option runner=DaskRunner --beam-option dask_client_address=scheduler:8786
  transfer extract --backbone model.pb --data photos/ --cache-dir gs://bucket/features --runner beam \
      --beam-option runner=DataflowRunner --beam-option project=my-project --beam-option region=europe-west1"""
CACHE_EXAMPLES = """examples:
  transfer cache ls --cache-dir features/
  transfer cache verify
  transfer cache rm 9c466a7488d741d40711d4deadac0808"""


def add(commands) -> None:
    _add_extract(commands)
    _add_cache(commands)


def _add_extract(commands) -> None:
    extract = command(commands, "extract", run_extract, "extract features once into the feature cache",
                      EXTRACT_EXAMPLES)
    add_input_arguments(extract)
    add_cache_arguments(extract, CACHE_HELP)
    extract.add_argument("--batch-size", type=int, default=32)
    extract.add_argument("--shard-size", type=int, metavar="N", help="examples per shard (default: ~64 MiB)")
    add_pool_argument(extract)
    extract.add_argument("--json", action="store_true", help="print the entries as JSON")


def _add_cache(commands) -> None:
    cache = command(commands, "cache", run_cache, "list, verify or remove feature-cache entries", CACHE_EXAMPLES)
    actions = cache.add_subparsers(dest="action", required=True, metavar="ACTION")
    summaries = (("ls", "list entries"), ("verify", f"check every shard's checksum (exit {CORRUPT_CACHE} if any is "
                 "corrupt)"), ("rm", "remove the given entries, or all with --all"))
    for action, summary in summaries:
        sub = actions.add_parser(action, help=summary, description=summary)
        sub.add_argument("keys", nargs="*", metavar="KEY", help="entries (default: all" +
                         ("; rm needs --all for that)" if action == "rm" else ")"))
        if action == "rm":
            sub.add_argument("--all", action="store_true", help="remove every entry of the cache directory")
        sub.add_argument("--cache-dir", metavar="DIR", help=CACHE_HELP)
        sub.add_argument("--json", action="store_true", help="print the entries as JSON")


def run_extract(args) -> int:
    from transfer.features.inputs import open_inputs

    inputs = open_inputs(backbone_spec(args), data_spec(args), batch_size=args.batch_size, engine=args.engine)
    entries = inputs.extract(args.cache_dir, dtype=args.cache_dtype, shard_size=args.shard_size,
                             progress=not args.json, pool=args.pool, runner=args.runner)
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
    if args.action == "rm" and not args.keys and not args.all:
        raise TransferError(f"cache rm: give the keys of the entries to remove (`transfer cache ls` lists them), "
                            f"or --all to remove every entry of {cache.root}")
    entries = [cache.open(key) for key in args.keys] if args.keys else cache.entries()
    if args.action == "rm":
        for entry in entries:
            cache.remove(entry.key)
            print(f"removed {printable(entry.key)}")
        return 0
    rows = [entry_row(entry, verify=args.action == "verify") for entry in entries]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        print(_entrytable(rows))
    else:
        print(f"no cache entries in {printable(cache.root)}")
    bad = [row for row in rows if row.get("bad_shards")]
    for row in bad:
        print(f"entry {printable(row['key'])}: corrupt or missing shard(s) {row['bad_shards']} "
              f"({printable('; '.join(row['problems'].values()))}); the next extract or fit with this cache "
              "re-extracts them", file=sys.stderr)
    return CORRUPT_CACHE if bad else 0


def entry_row(entry, verify: bool = False) -> dict:
    recipe = entry.manifest.get("ingredients", {})
    shapes = [list(shape) for shape in entry.feature_shapes]
    row = {"key": entry.key, "path": str(entry.path), "role": entry.manifest.get("role"), "examples": entry.count,
           "shape": shapes[0] if len(shapes) == 1 else shapes or None, "dtype": entry.manifest.get("dtype"),
           "pool": recipe.get("pool", "none"),
           "shards": len(entry.manifest["shards"]), "complete": entry.complete,
           "megabytes": round(entry.size_bytes() / 1e6, 2),
           "cut": recipe.get("backbone", {}).get("cut"), "data": recipe.get("data", {}).get("source")}
    if verify:
        problems = entry.shard_problems()
        row["bad_shards"], row["problems"] = list(problems), {str(index): text for index, text in problems.items()}
    return row


def _entrytable(rows) -> str:
    header = ("key", "role", "examples", "shape", "dtype", "MB", "cut", "pool", "status")
    lines = [header] + [(r["key"], str(r["role"]), str(r["examples"]), str(tuple(r["shape"] or ())), str(r["dtype"]),
                         f"{r['megabytes']:.1f}", str(r["cut"]), r["pool"],
                         ("CORRUPT " + str(r["bad_shards"])) if r.get("bad_shards") else
                         ("ok" if r["complete"] else "partial")) for r in rows]
    return table(lines)
