"""Discarding the counts of an optimizer step that a trainer meant to take but skipped.

A ``GradScaler`` that finds a non-finite gradient (HF Trainer through Accelerate, Lightning's AMP
plugin, DeepSpeed's loss scaler) does not call the optimizer's ``step``: Excitation's counts then stay,
and the next step would scale by two batches' counts. Rather than read each framework's own flag, the
guard watches the optimizer itself: a step that was due (:meth:`SkipGuard.due`, from the framework's
"before the optimizer step" hook) and did not happen by :meth:`SkipGuard.settle` (its "after" hook)
was skipped, whoever skipped it. (Accelerate's own ``step_was_skipped`` misses the fused case below.)
"""

from __future__ import annotations

from ..excitation import Excitation


class SkipGuard:
    """Watches the optimizer under ``excitation`` (its ``optimizer``: the wrapped one, or the one it is
    attached to, which steps in both cases) and discards the counts of a due step that did not happen."""

    def __init__(self, excitation: Excitation) -> None:
        self.excitation = excitation
        self.skipped = 0  # due steps that did not happen, for logging
        self._due = False
        self._stepped = False
        self._handle = excitation.optimizer.register_step_post_hook(self._mark)

    def _mark(self, optimizer: object, args: object, kwargs: object) -> None:
        # A GradScaler hands a fused optimizer (AdamW(fused=True), HF Trainer's default) the overflow as
        # ``found_inf`` and calls its step, which then changes nothing: that step was skipped too.
        found_inf = getattr(optimizer, "found_inf", None)
        self._stepped = found_inf is None or not bool(found_inf)

    def due(self) -> None:
        """The trainer is about to step the optimizer."""
        self._due, self._stepped = True, False

    def settle(self) -> bool:
        """After a due step: if the optimizer did not step, discard the counts. Returns whether it was
        skipped (False when no step was due)."""
        skipped = self._due and not self._stepped
        if skipped:
            self.excitation.discard_counts()
            self.skipped += 1
        self._due = self._stepped = False
        return skipped

    def remove(self) -> None:
        """Stop watching (the optimizer keeps no hook of the guard's)."""
        self._handle.remove()
