"""tilecraft: a tensor compiler and Ansor-style autotuner on Apache TVM's TensorIR."""

__version__ = "0.1.0"

from .errors import (  # noqa: F401
    TilecraftError, ModelLoadError, UnsupportedOpError, ShapeError, GraphError,
    InputError, ModuleLoadError, TargetError, DatabaseError,
)
