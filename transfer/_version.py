"""The package version, importable without TensorFlow (`transfer --version`, run configs)."""
__version__ = "0.1.0"
