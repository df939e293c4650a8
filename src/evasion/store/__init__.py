"""Run folders: resumable storage of evaluation records (SQLite) and adversarial examples (shards).

>>> from evasion.store import RunStore
>>> with RunStore("runs/demo") as store:                      # doctest: +SKIP
...     ev = evaluate(model, data, specs, store=store)         # resumes where it stopped
>>> RunStore.open("runs/demo").evaluation().curves()           # doctest: +SKIP

``RunStore`` joins a :class:`RunWriter` (the ``Sink`` that commits cells and sessions) and a
:class:`RunReader` (committed cells as :class:`StoredCell` records, the :class:`Evaluation`).
"""

from __future__ import annotations

from .catalog import RunSummary, find_run, list_runs, summarize
from .database import FORMAT_VERSION
from .reader import Integrity, RecordsModified, RunReader, StoredCell
from .run import RunStore
from .writer import RunWriter

__all__ = [
    "FORMAT_VERSION",
    "Integrity",
    "RecordsModified",
    "RunReader",
    "RunStore",
    "RunSummary",
    "RunWriter",
    "StoredCell",
    "find_run",
    "list_runs",
    "summarize",
]
