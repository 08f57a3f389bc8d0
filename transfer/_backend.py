"""Pin Keras 3 to the TensorFlow backend before anything imports keras."""
import contextlib
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


def import_tensorflow_quietly() -> None:
    """Import TF with its C++ start-up chatter (CUDA probing on CPU machines) parked.

    That chatter goes to fd 2 before any log level applies, so fd 2 points at a temporary file
    while TF starts and probes devices, and the file is replayed only if that fails. Setting
    TF_CPP_MIN_LOG_LEVEL=0 keeps everything (to diagnose a GPU that is not found).
    """
    import sys

    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0" or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with parked_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()  # device probing happens here, not mid-command


@contextlib.contextmanager
def parked_stderr(keep=()):
    """fd 2 (this process's and its children's) into a temporary file for the block; replayed
    if the block raises, unless what it raises is one of `keep` (said in one line elsewhere)."""
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as parked:
        os.dup2(parked.fileno(), 2)
        try:
            yield
        except BaseException as error:
            os.dup2(saved, 2)
            if not isinstance(error, tuple(keep)):
                parked.seek(0)
                sys.stderr.write(parked.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
