"""The objective over several outputs: sum over terms of weight x loss(output, labels).

Each term is an `Objective` (a sum over this rank's samples and the denominator that makes
it a mean over the global batch), so under DistributedDataParallel every term is averaged
over the global batch before it is weighted: the gradient equals the single-process one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .outputs import OutputLoss
from .spec import TrainConfig


def pick(outputs, index: int) -> torch.Tensor:
    """One output of a module that gives one tensor, or a tuple of them."""
    return outputs[index] if isinstance(outputs, (tuple, list)) else outputs


@dataclass
class Term:
    weight: float
    total: torch.Tensor  # the loss summed over this rank's samples
    den: torch.Tensor  # what makes it a mean over them


class OutputLosses:
    """The spec's loss terms grouped by the output they apply to, each group one objective
    of the task's (`make_objective(config)`, the config holding that group's terms); the
    first group is the main output's."""

    def __init__(self, config: TrainConfig, make_objective: Callable):
        groups: dict[int, list[OutputLoss]] = {}
        for term in config.summed_losses:
            groups.setdefault(term.index, []).append(term)
        # a group's own weights are inside its objective; 0 marks an output whose every
        # term is weighted 0 (trained without a loss)
        self.terms = tuple(
            (index, 0.0 if all(t.weight == 0 for t in group) else 1.0,
             make_objective(config.model_copy(update={"losses": tuple(group),
                                                      "loss": group[0].loss})))
            for index, group in groups.items())
        self.main = self.terms[0][0]  # the main output's index

    def __call__(self, outputs, targets: torch.Tensor) -> list[Term]:
        result = []
        for position, (index, weight, objective) in enumerate(self.terms):
            if weight == 0 and position > 0:  # `0 * loss(out)`: trained without it, and
                continue                      # never checked against the labels
            total, den = objective(pick(outputs, index), targets)
            result.append(Term(weight, total, den))
        return result

    @staticmethod
    def combine(terms: list[Term], all_sum: Callable, world: int = 1) -> torch.Tensor:
        """sum of weight x (total / global denominator): what is minimised; `all_sum` adds
        the denominators across processes (the identity in a single one)."""
        dens = all_sum(torch.stack([t.den.detach().to(torch.float32).clone()
                                    for t in terms]))
        loss = None
        for term, den in zip(terms, dens):
            part = term.total * world / den
            part = part if term.weight == 1 else part * term.weight
            loss = part if loss is None else loss + part
        return loss
