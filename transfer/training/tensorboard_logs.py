"""TensorBoard logs of runs and sweeps (`--tensorboard`): what Keras users open to watch training.

A run logs its scalars per epoch (Keras' own TensorBoard callback: `train/` and `validation/`)
and, at the end, each scored split's confusion matrix as an image. A sweep logs one such run
per setting and the HParams summaries (its plugin's protos come with the `tensorboard`
package) so that TensorBoard's HParams dashboard compares every setting. Writing scalars and
images needs only TensorFlow; without `log_dir` nothing is written.
"""
from __future__ import annotations

import io
from pathlib import Path

from transfer.errors import TransferError


class TensorBoardLogs:
    def __init__(self, log_dir: Path | None):
        self.log_dir = None if log_dir is None else Path(log_dir)

    def callbacks(self) -> list:
        """Keras' TensorBoard callback: scalars per epoch, no graph (the backbone's is large)."""
        if self.log_dir is None:
            return []
        import keras

        return [keras.callbacks.TensorBoard(log_dir=str(self.log_dir), write_graph=False, update_freq="epoch",
                                            profile_batch=0)]

    def epochs(self, history: dict) -> None:
        """A run's scalars per epoch as Keras' TensorBoard callback writes them (`train/` and
        `validation/`, `epoch_loss` and `epoch_accuracy`), for a run trained without it (a branch
        of a sweep's joint fit: `transfer.training.branches`)."""
        if self.log_dir is None:
            return
        import tensorflow as tf

        for role, prefix in (("train", ""), ("validation", "val_")):
            writer = tf.summary.create_file_writer(str(self.log_dir / role))
            with writer.as_default():
                for name in ("loss", "accuracy"):
                    for epoch, value in enumerate(history.get(prefix + name, ())):
                        tf.summary.scalar(f"epoch_{name}", value, step=epoch)
            writer.close()

    def confusion_matrices(self, metrics: dict, step: int, title: str | None = None) -> None:
        """Each scored split's confusion matrix, as the PNG the run directory holds (`title`: the
        run's, `reporting.run_title`)."""
        if self.log_dir is None:
            return
        import tensorflow as tf

        from transfer.training.reporting import plot_confusion_matrix

        for role in ("validation", "test"):
            if role not in metrics:
                continue
            png = io.BytesIO()
            plot_confusion_matrix(png, metrics[role]["confusion_matrix"], metrics["class_names"],
                                  (*([title] if title else []), f"{role} accuracy {metrics[role]['accuracy']:.3f}"))
            with tf.summary.create_file_writer(str(self.log_dir / role)).as_default():
                tf.summary.image("confusion_matrix", tf.image.decode_png(png.getvalue())[None], step=step)

    def hparams(self, setting: dict, scores: dict, trial_id: str) -> None:
        """One sweep setting's hyperparameters and final scores, for the HParams dashboard."""
        if self.log_dir is None:
            return
        import tensorflow as tf

        hp = hparams_api()
        with tf.summary.create_file_writer(str(self.log_dir)).as_default():
            hp.hparams(hparam_values(setting), trial_id=trial_id)
            for name, value in scores.items():
                if value is not None:
                    tf.summary.scalar(name, value, step=0)


def write_hparams_config(log_dir: Path, settings: list[dict], score_names: list[str]) -> None:
    """The sweep's axes and scores, written once at the top of its logs: the dashboard's columns."""
    import tensorflow as tf

    hp = hparams_api()
    trials = [hparam_values(setting) for setting in settings]
    axes = []
    for name in sorted({name for trial in trials for name in trial}):
        values = {trial[name] for trial in trials if name in trial}
        same_type = len({type(value) for value in values}) == 1  # a Discrete domain needs one type
        axes.append(hp.HParam(name, hp.Discrete(sorted(values)) if same_type else None))
    with tf.summary.create_file_writer(str(log_dir)).as_default():
        hp.hparams_config(hparams=axes, metrics=[hp.Metric(name) for name in score_names])


def hparam_values(setting: dict) -> dict:
    """A sweep setting as HParams values (bool, number or text); head options are flattened."""
    values = {}
    for key, value in setting.items():
        if key == "head_options":
            values.update({f"head_opt.{k}": _hparam(v) for k, v in (value or {}).items()})
        else:
            values[key] = _hparam(value)
    return values


def _hparam(value):
    if value is None:
        return "none"
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def hparams_api():
    try:
        from tensorboard.plugins.hparams import api
    except ImportError:
        raise TransferError("sweep --tensorboard writes HParams summaries, which need the tensorboard package: "
                            "pip install 'transfer[tensorboard]'") from None
    return api
