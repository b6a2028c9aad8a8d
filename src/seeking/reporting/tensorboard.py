"""TensorBoard event files of a run (``--tensorboard``), written by PyTorch's ``SummaryWriter``.

The loops hand over the same records they write as JSON lines; every number in them becomes a
scalar (``<prefix>/<key>``), so TensorBoard and the run folder never disagree.
"""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError

TAG_CHARACTERS = re.compile(r"[^\w.-]+")  # what TensorBoard would rewrite in a tag anyway ("test acc %")
INSTALL_HINT = "pip install 'seeking[tensorboard]' (or pip install tensorboard)"


def require_tensorboard() -> None:
    """A ``ConfigError`` unless the ``tensorboard`` package is installed (checked before a run starts)."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL_HINT}")


class ScalarLog:
    """Scalars of a run's records as TensorBoard events under ``log_dir``; does nothing if ``log_dir`` is None.

    ``purge_step``: a resumed run's first step; TensorBoard hides what was logged from there on before
    the interruption, so the resumed steps are not shown twice."""

    def __init__(self, log_dir: str | Path | None, purge_step: int | None = None) -> None:
        self.writer = None
        if log_dir is not None:
            require_tensorboard()
            from torch.utils.tensorboard import SummaryWriter  # slow to import; only runs that ask need it

            # flushed every 10 s (not the default 2 min): a run that stops on an error loses little
            self.writer = SummaryWriter(str(log_dir), purge_step=purge_step or None, flush_secs=10)

    def write(self, prefix: str, step: int, record: dict[str, Any]) -> None:
        """Every finite number of ``record`` at ``step``, except the step and epoch counters themselves."""
        if self.writer is None:
            return
        for key, value in record.items():
            is_number = isinstance(value, int | float) and not isinstance(value, bool)
            if is_number and key not in ("step", "epoch") and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{TAG_CHARACTERS.sub('_', key).strip('_')}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> ScalarLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
