"""Run folders: resumable storage of evaluation records (SQLite) and adversarial examples (shards).

>>> from evasion.store import RunStore
>>> with RunStore("runs/demo") as store:                      # doctest: +SKIP
...     ev = evaluate(model, data, specs, store=store)         # resumes where it stopped
>>> RunStore.open("runs/demo").evaluation().curves()           # doctest: +SKIP
"""

from __future__ import annotations

from .catalog import RunSummary, find_run, list_runs, summarize
from .database import FORMAT_VERSION
from .run import RunStore

__all__ = ["FORMAT_VERSION", "RunStore", "RunSummary", "find_run", "list_runs", "summarize"]
