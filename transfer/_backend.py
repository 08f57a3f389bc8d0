"""Pin Keras 3 to the TensorFlow backend before anything imports keras."""
import os

_BACKEND_VARIABLE = "KERAS_BACKEND"


def ensure_tensorflow_backend() -> None:
    """Set KERAS_BACKEND=tensorflow if unset; refuse another backend the user already chose.

    The feature layer runs a TensorFlow graph inside the model, so JAX/PyTorch backends cannot
    host it.
    """
    chosen = os.environ.setdefault(_BACKEND_VARIABLE, "tensorflow")
    if chosen != "tensorflow":
        raise ImportError(
            f"transfer needs Keras' TensorFlow backend, but {_BACKEND_VARIABLE}={chosen!r}; "
            f"unset it or set {_BACKEND_VARIABLE}=tensorflow"
        )
    import sys

    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend") and keras.backend.backend() != "tensorflow":
        raise ImportError(
            f"keras was already imported with the {keras.backend.backend()!r} backend; "
            f"transfer needs 'tensorflow': import transfer first or set {_BACKEND_VARIABLE}=tensorflow"
        )
