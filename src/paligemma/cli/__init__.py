"""The `paligemma` command line. May import every layer below it; nothing imports it."""

from .commands import main

__all__ = ["main"]
