"""Access levels: what a black-box attacker may see of the model it attacks, and how often.

A deployed model rarely hands out its gradients. :class:`Victim` wraps a model so that an attack
can *only* query it, and counts every query:

* ``view="scores"``: the attacker sees the model's scores (logits, and the reject score of a
  classifier with a reject option) and its decisions;
* ``view="labels"``: the attacker sees only the decisions (``REJECT`` = -1 included); asking for
  scores raises :class:`~evasion.errors.AccessError`.

Every call counts ``x.shape[0]`` queries (one per image); a call that would go over
``max_queries`` raises before the model runs. No gradient can pass through a victim: inputs that
require grad are refused, and outputs are computed under ``torch.no_grad()`` (they carry no graph,
so a ``backward()`` on them fails). A victim is not an ``nn.Module`` either, so it cannot be handed
to a white-box attack by mistake.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from .errors import AccessError, ConfigError, InputError
from .models.classifier import Classifier, as_classifier

__all__ = ["VIEWS", "Victim", "View"]

View = Literal["scores", "labels"]
#: the access levels a victim can grant
VIEWS: tuple[str, ...] = ("scores", "labels")


class Victim:
    """A model behind a query interface: scores or labels only, every query counted.

    Args:
        model: an :class:`~evasion.models.Classifier` or a plain ``nn.Module`` in eval mode that
            returns logits (a plain module is wrapped on the first query, which tells its number
            of classes).
        view: ``"scores"`` or ``"labels"`` (what the attacker may see).
        max_queries: the most images the attacker may send in total (``None``: no limit).
    """

    def __init__(self, model: nn.Module, *, view: View, max_queries: int | None = None):
        if not isinstance(model, nn.Module):
            raise ConfigError(f"a victim wraps a torch.nn.Module, got {type(model).__name__}")
        if view not in VIEWS:
            raise ConfigError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
        if max_queries is not None and (
            isinstance(max_queries, bool) or not isinstance(max_queries, int) or max_queries <= 0
        ):
            raise ConfigError(f"max_queries must be a positive integer or None, got {max_queries!r}")
        self._module = model
        self._model: Classifier | None = model if isinstance(model, Classifier) else None
        self.view: View = view
        self.max_queries = max_queries
        #: images sent to the model so far (all calls together)
        self.queries = 0

    # -- facts an attacker may know ------------------------------------------------------------
    @property
    def model(self) -> Classifier:
        """Not available: the attacker holds the victim, never the model."""
        raise AccessError("a victim does not hand out its model (black-box access)")

    def _classifier(self) -> Classifier:
        if self._model is None:
            raise AccessError(
                "this victim wraps a plain module: its number of classes is known after the first query"
            )
        return self._model

    @property
    def num_classes(self) -> int:
        return self._classifier().num_classes

    @property
    def rejects(self) -> bool:
        """Whether the model has a reject option (its scores then end with a reject score)."""
        return self._classifier().rejects

    @property
    def bounds(self) -> tuple[float, float]:
        return self._classifier().bounds

    @property
    def device(self) -> torch.device:
        if self._model is not None:
            return self._model.device
        return next((p.device for p in self._module.parameters()), torch.device("cpu"))

    @property
    def remaining(self) -> int | None:
        """Queries left in the budget (``None``: no limit)."""
        return None if self.max_queries is None else self.max_queries - self.queries

    # -- queries -------------------------------------------------------------------------------
    def _query(self, x: object) -> tuple[Classifier, Tensor]:
        """Validate a batch, charge it to the budget and return the model's scores (no graph)."""
        if not isinstance(x, Tensor):
            raise InputError(f"a victim is queried with a tensor of images, got {type(x).__name__}")
        if x.requires_grad:
            raise AccessError(
                "black-box access: the victim refuses inputs that require grad (no gradients pass through it)"
            )
        if self._model is None:
            self._model = as_classifier(self._module, x)
        clf = self._model
        xd = clf.check_inputs(x)
        n = int(xd.shape[0])
        if self.max_queries is not None and self.queries + n > self.max_queries:
            raise AccessError(
                f"query budget exhausted: {self.queries} of max_queries={self.max_queries} used, "
                f"{n} more asked"
            )
        self.queries += n
        with torch.no_grad():
            scores = clf(xd)
        return clf, scores.detach()

    def scores(self, x: Tensor) -> Tensor:
        """The model's scores for ``x`` (reject column included); ``view="scores"`` only."""
        if self.view != "scores":
            raise AccessError(f"this victim gives labels only (view={self.view!r}); scores are not available")
        return self._query(x)[1]

    def labels(self, x: Tensor) -> Tensor:
        """The model's decisions for ``x`` (``REJECT`` = -1 where a reject option refuses)."""
        clf, scores = self._query(x)
        return clf.decide(scores)

    def decide(self, scores: Tensor) -> Tensor:
        """The decisions that scores returned by :meth:`scores` stand for (no query: the argmax
        rule, with ``REJECT`` where the reject score is the largest)."""
        return self._classifier().decide(scores)

    def __repr__(self) -> str:
        budget = "" if self.max_queries is None else f", max_queries={self.max_queries}"
        return f"Victim(view={self.view!r}, queries={self.queries}{budget})"
