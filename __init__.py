"""tilecraft: a tensor compiler and Ansor-style autotuner on Apache TVM's TensorIR."""

__version__ = "0.1.0"

import os as _os

# TVM's CPU thread pool assumes hyper-threading and uses half the cores unless told: on a
# 2-core machine every kernel (and every tuning measurement) would run on ONE thread.  Use
# every core this process may run on; the pool reads this when it first starts, and worker
# processes inherit it.  A user's own TVM_NUM_THREADS wins.
_os.environ.setdefault("TVM_NUM_THREADS", str(len(_os.sched_getaffinity(0)) if hasattr(_os, "sched_getaffinity") else _os.cpu_count() or 1))

from .errors import (  # noqa: F401
    TilecraftError, ModelLoadError, UnsupportedOpError, ShapeError, GraphError,
    InputError, ModuleLoadError, TargetError, DatabaseError,
)

from .api import compile, load_model, prepare, tune  # noqa: E402,F401
from .compiler.module import Module  # noqa: E402,F401
