"""MCC, Minimum Class Confusion (Jin, Wang, Long and Wang, ECCV 2020): train on the
labelled source while making the predictions on the target less confused between
classes.

On a target batch, the predictions at temperature T (softmax(logits / T)) give a class
correlation matrix C = Y^T W Y, each image weighted by its certainty (1 + e^-entropy,
normalised to the batch size, so confident images count more); each row of C is then
divided by its sum. The loss is the confusion off the diagonal, (sum(C) - trace(C)) /
classes: 0 when no image is shared between two classes. It needs no domain classifier,
and the Transfer-Learning-Library reports it above DANN and CDAN on the digit tasks.
The training recipe (SGD, the annealing, both domains in one batch) is
worker/adapt/joint.py's, as for DANN; T = 2.5 and the loss weight 1.0 are the paper's
and TLlib's defaults (options.temperature, options.domain_loss_weight).
"""

from __future__ import annotations

from typing import Any

import torch

from worker.adapt.common import AdaptJob
from worker.adapt.joint import JointTrainer

DEFAULT_TEMPERATURE = 2.5


def class_confusion(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """MCC's loss on a batch of (target) logits (B, C)."""
    batch, classes = logits.shape
    probs = torch.softmax(logits.float() / temperature, dim=1)
    entropy = -(probs * torch.log(probs + 1e-5)).sum(dim=1).detach()
    weight = 1 + torch.exp(-entropy)
    weight = (batch * weight / weight.sum()).unsqueeze(1)
    confusion = (probs * weight).t() @ probs
    confusion = confusion / confusion.sum(dim=1, keepdim=True)
    return (confusion.sum() - confusion.trace()) / classes


class _Trainer(JointTrainer):
    def method_loss(
        self, feats: torch.Tensor, logits: torch.Tensor, n_source: int, progress: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loss = class_confusion(logits[n_source:], self.temperature) * self.weight
        return loss, loss.new_zeros(0)

    @property
    def temperature(self) -> float:
        value = self.job.option("temperature")
        return float(DEFAULT_TEMPERATURE if value is None else value)

    @property
    def weight(self) -> float:
        return float(self.job.option("domain_loss_weight"))

    def metrics(self, sums: list[float], seen: int, epoch: int) -> dict[str, float]:
        (loss,) = sums
        return {"class_confusion": loss / self.n_steps / self.weight}


def run(job: AdaptJob) -> list[dict[str, Any]]:
    return _Trainer(job).run()
