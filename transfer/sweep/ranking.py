"""Every setting's trials, run (or taken from the journal of a killed sweep) and ranked: by
validation accuracy, test accuracy breaking only exact ties (choosing by it would fit the test
split)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

from transfer.errors import TransferError, check_int
from transfer.sweep.journal import TrialJournal
from transfer.features.feature_splits import FeatureSplits
from transfer.training.settings import default
from transfer.training.tensorboard_logs import TensorBoardLogs, write_hparams_config
from transfer.sweep.grid import SETTING_AXES, TENSORBOARD_SCORES
from transfer.sweep.joint import Trial, groups, head_key, joins, train_together
from transfer.sweep.report import score, accuracy_text, label, short_cut_names, varying_keys
from transfer.sweep.trials import build_head, features_for, train_setting


def run_sweep(features: FeatureSplits | dict, settings: list[dict], repeats: int = 1, seed: int = 0,
              patience: int | None = default("patience"), progress: bool = True, thawed=None,
              log_dir=None, journal: TrialJournal | None = None, together: bool = True) -> list[dict]:
    """Train each setting `repeats` times (seeds seed, seed+1, ...); rows ranked best first.

    The trials of Keras heads on frozen features train together, as branches of one model per
    batch size and optimizer (`transfer.sweep.joint`), each as it would alone; the others (thaw,
    a head with a weight penalty or a refit, the scikit-learn probe) one at a time, as all do
    with `together=False`.

    `features`: one FeatureSplits, or a dict of them by cut when the settings name a `cut` each
    (a sweep over cuts).
    Every head is built on the features before the first run, so a bad option or a head that
    cannot read these features fails at once rather than an hour into the sweep. `thawed`: see
    `train_setting`. `log_dir`: TensorBoard logs, one directory per run, with HParams summaries.
    `journal`: where each finished run is written as it finishes, and the runs it holds already
    are taken from (`transfer.sweep.journal`: a killed sweep resumes).
    """
    thawed = thawed or {}
    missing = sorted({s["thaw"] for s in settings if s.get("thaw")} - set(thawed))
    if missing:
        raise TransferError(f"sweep: no thawed layer given for thaw={missing[0]}")
    splits = list(features.values()) if isinstance(features, dict) else [features]
    if any(f is not None and not f.has("validation") for f in (*splits, *(f for f, _ in thawed.values()))):
        raise TransferError("a sweep ranks settings by validation accuracy; these features have no validation split")
    if not settings:
        raise TransferError("a sweep needs at least one setting")
    repeats = check_int("sweep", "repeats", repeats)
    joined = set()
    for setting in {head_key(s): s for s in settings}.values():
        setting_features, suffix = features_for(setting, features, thawed)
        head, _ = build_head(setting_features, setting, suffix)
        if together and joins(setting, head):
            joined.add(head_key(setting))
    seeds = range(seed, seed + repeats)
    _begin_runs(settings, seeds, log_dir, journal, progress)
    trials = [Trial(f"{number:03d}" + (f"-seed{run_seed}" if repeats > 1 else ""), setting, run_seed)
              for number, setting in enumerate(settings, start=1) for run_seed in seeds]
    results = {trial: journal.get(trial.setting, trial.seed) for trial in trials} if journal else {}
    finished = _Finished(settings, len(trials), sum(r is not None for r in results.values()), repeats, progress)
    for group in groups([t for t in trials if results.get(t) is None], features, joined):
        logs = [TensorBoardLogs(None if log_dir is None else Path(log_dir) / trial.name) for trial in group]
        for log in logs if log_dir is not None else ():
            shutil.rmtree(log.log_dir, ignore_errors=True)  # a killed run's: this run writes its own
        if len(group) > 1:
            runs = train_together(features, group, patience, logs)
        else:
            runs = [train_setting(features, group[0].setting, group[0].seed, patience, thawed, logs[0])[1]]
        for trial, run, log in zip(group, runs, logs):
            results[trial] = run
            log.hparams({**trial.setting, "seed": trial.seed}, {name: run[name] for name in TENSORBOARD_SCORES},
                        trial_id=trial.name)
            if journal:
                journal.record(trial.name, trial.setting, trial.seed, run)
            finished.say(trial, run)
    rows = [_row(setting, [results[t] for t in trials if t.setting is setting]) for setting in settings]
    rows.sort(key=lambda row: (-score(row["val_accuracy_mean"]), -score(row["test_accuracy_mean"])))
    return [{"rank": rank, **row} for rank, row in enumerate(rows, start=1)]


class _Finished:
    """The `[i/N] setting: val ... (s)` line of each trial as it finishes (trials taken from the
    journal count as done)."""

    def __init__(self, settings: list, total: int, done: int, repeats: int, progress: bool):
        self.shown, self.cut_names = varying_keys(settings), short_cut_names([s.get("cut") for s in settings])
        self.total, self.done, self.repeats, self.progress = total, done, repeats, progress

    def say(self, trial, run: dict) -> None:
        self.done += 1
        if self.progress:
            again = f" seed={trial.seed}" if self.repeats > 1 else ""
            print(f"[{self.done}/{self.total}] {label(trial.setting, self.shown, self.cut_names)}{again}: "
                  f"val {accuracy_text(run['val_accuracy'])} ({run['seconds']:.1f} s)", file=sys.stderr, flush=True)


def _begin_runs(settings: list[dict], seeds: range, log_dir, journal, progress: bool) -> None:
    """The HParams summaries of every run (a resumed sweep's stale ones removed), and what a resumed
    sweep takes from its journal, said once."""
    if log_dir is not None:
        for stale in Path(log_dir).glob("events.out.tfevents.*"):  # a resumed sweep's: written again
            stale.unlink()
        write_hparams_config(Path(log_dir), [{**s, "seed": n} for s in settings for n in seeds],
                             list(TENSORBOARD_SCORES))
    taken = sum(journal.get(s, n) is not None for s in settings for n in seeds) if journal else 0
    if taken and progress:
        print(f"resuming the sweep in {journal.path.parent}: {taken} of {len(settings) * len(seeds)} trials taken "
              f"from its journal ({journal.path.name})", file=sys.stderr, flush=True)


def _row(setting: dict, runs: list[dict]) -> dict:
    val = [run["val_accuracy"] for run in runs]
    test = [run["test_accuracy"] for run in runs]
    return {"cut": setting.get("cut"), "head": setting["head"], **{key: setting.get(key) for key in SETTING_AXES},
            "head_options": setting["head_options"],
            "val_accuracy_mean": _mean(val), "val_accuracy_std": _std(val),
            "test_accuracy_mean": _mean(test), "test_accuracy_std": _std(test),
            "seconds_mean": _mean([run["seconds"] for run in runs]), "repeats": len(runs),
            "val_accuracies": val, "epochs_run": [run["epochs_run"] for run in runs], "setting": setting}


def _mean(values) -> float | None:
    return None if None in values else float(np.mean(values))


def _std(values) -> float | None:
    """Population std: 0.0 for one run."""
    return None if None in values else float(np.std(values))
