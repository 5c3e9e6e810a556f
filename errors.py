"""tilecraft's exception types.  The CLI turns any of these into one line and exit code 2."""


class TilecraftError(Exception):
    """Base class: an error about the user's input, not a bug in tilecraft."""


class ModelLoadError(TilecraftError):
    """The model file is missing, unreadable or not a valid model."""


class UnsupportedOpError(TilecraftError):
    """The model uses operators tilecraft cannot compile (all of them are listed)."""


class ShapeError(TilecraftError):
    """A shape is dynamic and unbound, or shapes do not agree."""


class GraphError(TilecraftError):
    """The graph IR is malformed (raised by the verifier and by passes)."""


class InputError(TilecraftError):
    """A run-time input is missing, unexpected, or of the wrong shape or dtype."""


class ModuleLoadError(TilecraftError):
    """An exported module cannot be loaded."""


class TargetError(TilecraftError):
    """The target is unknown or cannot be used on this machine."""


class DatabaseError(TilecraftError):
    """The tuning database cannot be opened or is corrupt."""
