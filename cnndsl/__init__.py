"""cnndsl: a declarative language for convolutional networks, and its compiler."""

from .api import Model, load, loads
from .diagnostics import CnnError, Diagnostic

__all__ = ["CnnError", "Diagnostic", "Model", "load", "loads"]
__version__ = "0.1.0"
