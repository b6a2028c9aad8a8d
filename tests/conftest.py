"""Fixtures shared by the test modules."""

import pytest

from seeking.training.engine import register_step_hook


@pytest.fixture
def inject():
    """Register step hooks for a test: ``inject(hook)``; ``inject.undo()`` removes them (teardown too)."""
    handles = []

    class Injector:
        def __call__(self, hook):
            handles.append(register_step_hook(hook))

        def undo(self):
            while handles:
                handles.pop().remove()

    injector = Injector()
    yield injector
    injector.undo()
