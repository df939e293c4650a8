"""`LocalEngine`: the cells of an evaluation in plan order, in this process.

It is the loop ``evaluate()`` runs when no engine is given
(:func:`evasion.evaluation.plan.run_in_order`), as an engine object beside ``RayEngine``: pass
it where an engine is expected (e.g. chosen at run time). The loop itself stays in
``evaluation/`` so that ``evaluate()`` has a default without importing this layer.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..evaluation.plan import Context, Emit, Load, Task, run_in_order

__all__ = ["LocalEngine"]


class LocalEngine:
    """Runs the tasks in plan order in this process, dropping products nobody needs any more."""

    def run(self, tasks: Sequence[Task], ctx: Context, load: Load, emit: Emit) -> None:
        run_in_order(tasks, ctx, load, emit)
