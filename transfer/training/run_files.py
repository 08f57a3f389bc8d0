"""What a fit run leaves: every split scored (accuracy, per-class report, confusion matrix), and
the run directory written (model, exports, config, metrics, history, plots)."""
from __future__ import annotations

from pathlib import Path

from transfer.layers.export import export_all
from transfer.training.prediction import predict_batches
from transfer.training.reporting import (MODEL_FILE, classification_metrics, plot_confusion_matrix,
                                         plot_learning_curves, run_title, write_history, write_json)
from transfer.training.keras_training import TrainingLog


def evaluate_splits(model, source, class_names) -> dict:
    """Accuracy per split; the per-class report and confusion matrix of each."""
    metrics = {"class_names": class_names}
    for role in ("validation", "test"):
        dataset = source.split(role)
        if dataset is not None:
            probabilities, labels = predict_batches(model, dataset)
            metrics[role] = classification_metrics(labels, probabilities, class_names)
    return metrics


def write_run(directory: Path, model, config, metrics, log: TrainingLog, class_names, export) -> None:
    model.save(directory / MODEL_FILE)
    if export:
        written = export_all(model, directory / "export", export, class_names)
        config["exports"] = {name: str(Path(path).relative_to(directory)) for name, path in written.items()}
    write_json(directory / "config.json", config)
    write_json(directory / "metrics.json", metrics)
    if log.history:
        write_history(directory / "history.csv", log.history)
        plot_learning_curves(directory / "learning_curves.png", log.history, kept_epoch=log.kept_epoch,
                             title=run_title(config))
    reported = next((role for role in ("test", "validation") if role in metrics), None)
    if reported:
        plot_confusion_matrix(directory / "confusion_matrix.png", metrics[reported]["confusion_matrix"], class_names,
                              (run_title(config), f"{reported} accuracy {metrics[reported]['accuracy']:.3f}"))
