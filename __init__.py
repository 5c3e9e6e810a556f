"""tilecraft: a tensor compiler and Ansor-style autotuner on Apache TVM's TensorIR."""

__version__ = "0.1.0"

from .errors import (  # noqa: F401
    TilecraftError, ModelLoadError, UnsupportedOpError, ShapeError, GraphError,
    InputError, ModuleLoadError, TargetError, DatabaseError,
)

from .api import compile, load_model, prepare, tune  # noqa: E402,F401
from .compiler.module import Module  # noqa: E402,F401
