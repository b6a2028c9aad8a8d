"""Fixtures shared by the test modules."""

import pytest
import torch

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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is faster, and far faster on a busy machine (no spinning threads).
    A module takes it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
