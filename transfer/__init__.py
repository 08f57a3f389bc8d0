"""transfer: reuse frozen TensorFlow graphs and SavedModels as Keras feature layers.

Importing the package registers its Keras classes (FeatureLayer, the preprocessing layer, the
heads), so that `keras.models.load_model` finds them in a fresh process after `import transfer`.
"""
from transfer._backend import ensure_tensorflow_backend, import_tensorflow_quietly
from transfer.errors import TransferError

ensure_tensorflow_backend()
import_tensorflow_quietly()

__version__ = "0.1.0"

from transfer import heads  # noqa: E402  (after the backend is pinned)
from transfer.backbone import Backbone  # noqa: E402
from transfer.callbacks import GradualUnfreezing, TwoStageSchedule  # noqa: E402
from transfer.estimators import FeatureExtractor  # noqa: E402
from transfer.inspection import inspect_graph  # noqa: E402
from transfer.layer import FeatureLayer  # noqa: E402
from transfer.model import PreprocessingLayer  # noqa: E402
from transfer.optimizers import GroupedOptimizer  # noqa: E402
from transfer.prediction import evaluate, predict  # noqa: E402
from transfer.thawing import ThawedFeatureLayer, thaw  # noqa: E402
from transfer.trace_memory import ReleaseTracedSteps  # noqa: E402
from transfer.training import fit  # noqa: E402

__all__ = ["Backbone", "FeatureExtractor", "FeatureLayer", "GradualUnfreezing", "GroupedOptimizer", "PreprocessingLayer",
           "ReleaseTracedSteps", "TransferError", "TwoStageSchedule", "evaluate", "fit", "heads", "inspect_graph", "predict", "thaw",
           "ThawedFeatureLayer", "__version__"]
