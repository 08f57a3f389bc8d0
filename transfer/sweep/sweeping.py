"""Sweeps: train many head settings on features extracted once, and rank them.

The backbone is the slow part of transfer learning and does not change between head settings,
so a sweep trains every setting on the same feature datasets (from the feature cache or any
tf.data source) and leaves a ranked table, `sweep.csv`, `sweep.json` and a bar chart. Settings
are ranked by validation accuracy; test accuracy only breaks exact ties, since choosing by it
would fit the test split. `run_sweep` trains settings on any `FeatureSplits`; `sweep` adds what
the command needs around it: the backbone and data, the feature cache, thawed layers, the files,
and the best setting retrained into a full `transfer fit` run. With `out`, each finished trial is
written to the run directory's journal as it finishes (`transfer.sweep.journal`), so a killed sweep rerun
with the same `out` trains only the trials it lacks.
"""
from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
from pathlib import Path

import tensorflow as tf

from transfer import heads as registry
from transfer.errors import TransferError
from transfer.sweep.journal import TrialJournal, check_resumable, finished_trials
from transfer.training.reporting import write_json
from transfer.features.runners import get_runner
from transfer.features.spec import CacheSpec
from transfer.graph.spec import BackboneSpec
from transfer.data.spec import DataSpec
from transfer.training.keywords import dispatch
from transfer.training.settings import default
from transfer.training.tensorboard_logs import hparams_api
from transfer.sweep.grid import ALL_CUTS, SETTING_AXES, THAW_AXES, TRAINING_AXES, expand_grid, load_grid
from transfer.sweep.cut_ranking import FINALISTS, narrowed_sweep, ranks_first, write_ranking
from transfer.sweep.ranking import run_sweep
from transfer.sweep.report import write_sweep
from transfer.text import printable


def _swept_cuts(cut, cuts):
    """The cut spec to load: `--cut` alone, or the `--cuts` axis (a list, `a,b` or `candidates`)."""
    if cuts is None:
        return cut
    if cut not in (None, "auto"):
        raise TransferError(f"sweep: give one cut (--cut {cut}) or the cuts to sweep (--cuts), not both")
    if isinstance(cuts, str):
        return cuts
    if not isinstance(cuts, (list, tuple)) or not cuts or not all(isinstance(c, str) for c in cuts):
        raise TransferError(f"sweep: cuts={cuts!r} must be a list of cut names, 'a,b' or 'candidates'")
    return list(cuts)


def _storage_pool(pool, settings: list[dict], several_cuts: bool, progress: bool) -> str:
    """What extraction does to spatial features (see `sweep`): averaged when every setting
    averages positions anyway and several cuts make the cache large."""
    from transfer.features.extraction import check_pool

    if pool is not None:
        if check_pool(pool) == "grid2":
            _check_grid_pooling(settings)
        return pool
    if not several_cuts or not all(registry.kind_of(s["head"]).averages_positions(s["head_options"])
                                   for s in settings):
        return "none"
    if progress:
        print("features are averaged over positions before they are cached, as every swept head averages them "
              "(--pool none keeps them)", file=sys.stderr, flush=True)
    return "avg"


def _check_grid_pooling(settings: list[dict]) -> None:
    """`--pool grid2` keeps 2x2 cells of each map: only a head that pools them (to their average or
    the grid) reads what it would from the whole maps."""
    for setting in settings:
        kind = registry.kind_of(setting["head"])
        if not (kind.averages_positions(setting["head_options"]) or kind.pools_to_grid2(setting["head_options"])):
            raise TransferError(f"--pool grid2 caches a 2x2 grid of each map's cells; head {setting['head']!r} "
                                f"with {setting['head_options'] or 'its defaults'} reads more of the positions: "
                                "use --pool none, or pooling=avg|grid2")


def _on_cuts(settings: list[dict], cut_specs: list[str]) -> list[dict]:
    """Every setting on every cut; a head that reads several cuts (`multilayer`) on all of them
    at once (its `cut` is ALL_CUTS when there are several)."""
    crossed = []
    for setting in settings:
        if registry.kind_of(setting["head"]).traits.several_cuts and len(cut_specs) > 1:
            crossed.append({"cut": ALL_CUTS, **setting})
        else:
            crossed += [{"cut": spec, **setting} for spec in cut_specs]
    return sorted(crossed, key=lambda s: ([*cut_specs, ALL_CUTS].index(s["cut"])))  # cut by cut, as before


def _pooled_like(setting: dict, pool: str) -> dict:
    """The best setting's head options for its retraining on the cut's full features: the pooling
    the sweep's cache applied, made the head's own (a grid's cells leave the head's own pooling
    to choose, as in the sweep: `cache_pool`)."""
    options = dict(setting["head_options"])
    if pool not in ("none", "grid2") and registry.kind_of(setting["head"]).takes("pooling"):
        options.setdefault("pooling", pool)
    return options


def _in_graph_order(backbone) -> list[str]:
    position = backbone.info.position
    return [c.spec for c in sorted(backbone.cuts, key=lambda c: position[c.tensor.op.name])]


def _definition(inputs, settings: list[dict], cut_specs: list[str], **terms) -> dict:
    """What decides a sweep's results, its journal's fingerprint: a rerun resumes only the same sweep."""
    backbone = inputs.backbone
    return {"backbone": {"fingerprint": backbone.fingerprint, "signature": backbone.loaded.signature,
                         **backbone.feeding},
            "cuts": cut_specs, "data": inputs.splits.identity, "preprocessing": inputs.kind.recipe(), "grid": settings,
            **{key.replace("_", " "): value for key, value in terms.items()}}


@dataclasses.dataclass
class SweepResult:
    rows: list  # ranked, best first (see run_sweep)
    run_dir: Path | None  # sweep.csv, sweep.json, sweep.png, config.json and best/ (a fit run)
    best: object  # the FitResult of the best setting, retrained into best/ (None without `out`)
    ranking: list | None = None  # every cut ranked by the ridge probe (`transfer.sweep.cut_ranking`), or None


@dataclasses.dataclass
class _SweepRun:
    """One `sweep` call once its arguments are checked and its features extracted."""

    inputs: object  # transfer.features.inputs.Inputs
    data: object  # what the user gave as data (config.json records it)
    settings: list
    cut_specs: list
    sources: dict  # the backbone's and data's settings as config.json records them
    cache: CacheSpec
    pool: str
    definition: dict
    resumable: bool
    repeats: int
    seed: int
    patience: int | None
    out: object
    export: tuple
    tensorboard: bool
    progress: bool
    strategy: object
    finalists: int | None
    together: bool


def sweep(backbone, data, *, heads=("linear",), head_options=None, grid=None, repeats: int = 1, seed: int = 0,
          patience: int | None = default("patience"), cuts=None, cache: CacheSpec | None = None, out=None,
          export=("savedmodel", "pb"), tensorboard: bool = False, progress: bool = True, strategy=None,
          finalists: int | None = FINALISTS, together: bool = True, **options) -> SweepResult:
    """Extract once (or reuse the feature cache), train every setting on the cached features,
    rank them; with `out`, write the sweep files and turn the best setting into a full run
    directory (`out/best`, exactly as `transfer fit` writes one, backbone + head exported).

    `backbone`, `data`: as for `transfer.fit` (a path, `BackboneSpec` or `Backbone`; a spec,
    `DataSpec` or `DataSplits`), and so are the backbone's, data's and cache's keyword `options`
    (cut, signature, inputs, feeds, allow_ops, max_memory; data_dir, validation_split, per_class,
    preprocessing, scale; cache_dir, cache_dtype, engine, precision, runner, pool; or `cache`, a `CacheSpec`).
    `grid`: a TOML/YAML grid file (see `load_grid`); its axes replace the keyword ones.
    `cuts`: the cuts to sweep (`"a,b"`, a list, or `"candidates"`: every candidate cut), all
    extracted in one pass, each cut's features its own cache entry; every setting trains on
    every cut. `pool`: `none`, `avg`, `max`: what extraction does to spatial features before
    they are cached (default: `avg` when several cuts are swept and every swept head averages
    positions anyway, else `none`).
    The other `options` are the axes: lr, epochs, batch_size, optimizer, thaw (0 = frozen), each
    a list of choices; a thaw N trains its last N weight layers from the cached outputs of its
    frozen prefix (with several cuts, only for a head that reads them all: the layers before the
    deepest). The thaw options (thaw_lr_scale, thaw_weight_decay, unfreeze_every, head_epochs)
    are axes of the settings with thaw > 0. `runner`: where the extraction runs ("local", "beam"
    or a `transfer.features.runners.BeamRunner`). `tensorboard`: every run's logs and the HParams
    summaries under `out/tensorboard`, the best setting's run under `out/best/tensorboard`.
    `strategy`: where every setting trains, as for `transfer.fit` (only the chief writes `out`).
    `finalists`: when a `logreg` sweep has more cuts than this, every cut is first ranked by the
    closed-form ridge probe (average and, on cached maps, 2x2-grid pooling) and the settings train
    on the best `finalists` (cut, pooling) pairs only (`transfer.sweep.cut_ranking`; the ranking
    is `SweepResult.ranking` and `out/cut_ranking.csv`); 0 or None: every cut gets every setting.
    `together`: False trains every setting alone, not Keras heads as branches of one model (`run_sweep`).
    An unknown keyword is one line naming the valid ones.
    """
    from transfer.training.distribute import strategy_named
    from transfer.features.inputs import open_inputs

    spec, data_spec, cache, axes = dispatch("sweep", backbone, data, options, cache=cache, own=tuple(SETTING_AXES))
    cache = CacheSpec.of(cache, runner=get_runner(cache.runner))  # unknown, or Beam missing: before any slow work
    _check_sweep_output(out, tensorboard)
    chosen = {"heads": heads, "head_options": head_options, "cuts": cuts, **axes, **(load_grid(grid) if grid else {})}
    cut = _swept_cuts(spec.cut if isinstance(spec, BackboneSpec) else "auto", chosen.pop("cuts"))
    spec = BackboneSpec.of(spec, cut=cut) if isinstance(spec, BackboneSpec) else spec  # a Backbone is cut already
    settings = expand_grid(chosen.pop("heads"), head_options=chosen.pop("head_options"), **chosen)
    data_spec = DataSpec.of(data_spec, seed=seed)
    strategy = strategy_named(strategy)  # before TensorFlow runs anything: multiworker must
    inputs = open_inputs(spec, data_spec, engine=cache.engine, precision=cache.precision,
                         calibration_size=cache.calibration_size)
    inputs.announce(data_spec, progress)
    settings, cut_specs = _settings_on_cuts(settings, inputs.backbone)
    pool = _storage_pool(cache.pool, settings, len(cut_specs) > 1, progress)
    definition = _definition(inputs, settings, cut_specs, repeats=repeats, seed=seed, patience=patience, pool=pool,
                             cache_dtype=cache.dtype, engine=cache.engine, strategy=type(strategy).__name__,
                             tensorboard=tensorboard, **cache.precision_config)
    sources = {"cut": _listed(spec.cut) if isinstance(spec, BackboneSpec) else cut_specs,
               "signature": spec.signature if isinstance(spec, BackboneSpec) else inputs.backbone.loaded.signature,
               **{key: getattr(data_spec, key) for key in ("data_dir", "validation_split", "per_class", "seed",
                                                           "preprocessing", "scale")}}
    return _sweep_run(_SweepRun(inputs, data, settings, cut_specs, sources, cache, pool, definition,
                                _resumable(out, strategy, definition), repeats, seed, patience, out, export,
                                tensorboard, progress, strategy, finalists, together))


def _listed(value):
    return list(value) if isinstance(value, tuple) else value


def _check_sweep_output(out, tensorboard: bool) -> None:
    from transfer.training.reporting import check_new_run_dir

    if out is not None:
        check_new_run_dir(out)
    elif tensorboard:
        raise TransferError("TensorBoard logs are written in the sweep directory: give `out` with `tensorboard`")
    if tensorboard:
        hparams_api()  # the tensorboard package is there, before any slow work


def _settings_on_cuts(settings: list[dict], backbone) -> tuple:
    """(every setting on the backbone's cuts, the cut specs); a thaw over several cuts only for a
    head that reads them all."""
    cut_specs = [c.spec for c in backbone.cuts]
    settings = _on_cuts(settings, cut_specs)
    one_cut = next((s["head"] for s in settings if s.get("thaw") and len(cut_specs) > 1 and s["cut"] != ALL_CUTS), None)
    if one_cut:  # a thaw N is one layer on all the cuts (below); a head of one cut would need one per cut
        raise TransferError(f"sweep: head {one_cut!r} trains on one cut, and a thaw on {len(cut_specs)} cuts trains a "
                            "head of several cuts (multilayer): sweep the cuts frozen first, then thaw at the best "
                            "one (--cut CUT --thaw N)")
    return settings, cut_specs


def _resumable(out, strategy, definition: dict) -> bool:
    """Whether the sweep keeps a journal (every worker runs the same trials, and only the chief has
    it); another sweep's unfinished trials in `out` are refused before any extraction."""
    from transfer.training.reporting import partial_dir

    resumable = out is not None and not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if resumable:
        check_resumable(partial_dir(out), definition)
    return resumable


def _extracted(run: _SweepRun) -> tuple:
    """(the features by cut, or None when every setting thaws; thaw N -> (its prefix outputs, its
    ThawedFeatureLayer)), from the cache, extracting what is not there yet."""
    from transfer.layers.thawing import ThawedFeatureLayer

    inputs, cache, settings = run.inputs, run.cache, run.settings
    with run.strategy.scope():  # thawed weights are variables
        layers = {count: ThawedFeatureLayer(inputs.backbone, last=count, name="features")  # a bad N fails before
                  for count in sorted({s["thaw"] for s in settings if s.get("thaw")})}  # any extraction
    joined = ALL_CUTS if any(s["cut"] == ALL_CUTS for s in settings) else None
    features = (inputs.cached_features_by_cut(cache, progress=run.progress, pool=run.pool,
                                              joined=joined)
                if any(not s.get("thaw") for s in settings) else None)
    thawed = {count: (inputs.cached_prefix(layer, cache, progress=run.progress), layer)
              for count, layer in layers.items()}
    return features, thawed


def _sweep_run(run: _SweepRun) -> SweepResult:
    """Train every setting (OUT.partial, kept with its journal if the sweep is killed), write the
    sweep files and retrain the best setting into `out/best`."""
    from transfer.training.distribute import run_dir_of
    from transfer.training.reporting import run_directory

    features, thawed = _extracted(run)
    ranking = None
    if ranks_first(run.settings, run.cut_specs, run.finalists):
        ranking, settings = narrowed_sweep(features, run.settings, run.finalists, run.progress)
        run = dataclasses.replace(run, settings=settings)
    with run_dir_of(run.strategy, run.out) as written, \
            run_directory(written, keep=finished_trials if run.resumable else None) if written is not None \
            else contextlib.nullcontext() as directory:
        journal = TrialJournal(directory, run.definition) if run.resumable and directory is not None else None
        with run.strategy.scope():  # every head and optimizer is made in it
            rows = run_sweep(features, run.settings, repeats=run.repeats, seed=run.seed, patience=run.patience,
                             progress=run.progress, thawed=thawed,
                             log_dir=directory / "tensorboard" if run.tensorboard else None, journal=journal,
                             together=run.together)
        if directory is None:
            return SweepResult(rows, None, None, ranking)
        write_sweep(directory, rows, _in_graph_order(run.inputs.backbone))
        if ranking is not None:
            write_ranking(directory / "cut_ranking.csv", ranking)
        write_json(directory / "config.json", {"backbone": run.inputs.backbone.loaded.source, "data": run.data,
                                               **run.inputs.backbone.feeding, "settings": run.settings,
                                               "repeats": run.repeats, **run.sources, "cuts": run.cut_specs,
                                               "pool": run.pool, "cache_dir": run.cache.dir})
        if run.progress:  # the retraining takes a while: say what it is
            print(f"best: {rows[0]['head']} (validation {rows[0]['val_accuracy_mean']:.3f}), retrained with its "
                  f"exports into {printable(Path(run.out) / 'best')}", flush=True)
        result = _fit_best(run, rows[0]["setting"], directory)
    if written != run.out:  # another worker than the chief: it wrote nothing
        return SweepResult(rows, None, result, ranking)
    result.run_dir = Path(run.out) / "best"
    return SweepResult(rows, Path(run.out), result, ranking)


def _fit_best(run: _SweepRun, best: dict, directory: Path):
    """The best setting retrained into `directory/best`, a full `transfer fit` run."""
    from transfer.training.fitting import fit

    shutil.rmtree(directory / "best", ignore_errors=True)  # a resumed sweep's, killed at its very end
    backbone = run.inputs.backbone
    if len(run.cut_specs) > 1 and best["cut"] != ALL_CUTS:
        backbone = backbone.recut(best["cut"])
    return fit(backbone, run.inputs.splits, head=best["head"], head_options=_pooled_like(best, run.pool),
               **{key: best[key] for key in TRAINING_AXES if best[key]},  # thaw 0: none
               **{key: best[key] for key in THAW_AXES if best.get(key) is not None}, patience=run.patience,
               seed=run.seed, preprocessing=run.inputs.kind.preprocessing,
               cache=CacheSpec.of(run.cache, pool=run.pool), out=directory / "best",
               export=run.export, tensorboard=run.tensorboard, verbose=0, strategy=run.strategy)
