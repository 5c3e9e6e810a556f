"""Targets: what we compile for, which sketch rules apply, and how to measure there."""

from .base import Target, resolve_target  # noqa: F401
