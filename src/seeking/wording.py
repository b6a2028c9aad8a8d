"""Small pieces of the project's messages, so that every printed count reads right."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, in the plural unless ``n`` is 1: ``counted(1, "seed") == "1 seed"``,
    ``counted(3, "switch", "switches") == "3 switches"``."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
