"""Adaptation by training on both domains at once: labelled source batches and unlabeled
target batches go through the model together, and a method adds its own loss on them
(DANN a domain classifier behind a reversed gradient, MCC the class confusion of the
target predictions).

The recipe is the published one, shared by both (the Transfer-Learning-Library's
`examples/domain_adaptation/image_classification/`): SGD with Nesterov momentum 0.9 and
weight decay 1e-3 at 0.01, annealed as lr / (1 + 10 p) ** 0.75 with p the progress in
[0, 1] (Ganin et al.), the whole trainable backbone at the head's rate, 20 epochs. The
model trains under the job's strategy (full, or partial's last blocks), except that a
linear probe trains in full: aligning features needs a backbone that can move. Source
and target go through the backbone in one batch, so BatchNorm statistics come from both.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from worker.adapt.common import AdaptJob, cycled_batches
from worker.training import engine, registry, strategies

DEFAULT_LR = 0.01
MOMENTUM, WEIGHT_DECAY = 0.9, 1e-3
DEFAULT_EPOCHS = 20
# Ganin et al.'s annealing: lr_p = lr / (1 + ALPHA p) ** BETA.
ALPHA, BETA = 10.0, 0.75


class JointTrainer:
    """One run: the model split at the head, the optimiser, the two domains' batches.

    A method subclasses it: `extra_modules()` (trained alongside, such as a domain
    classifier), `method_loss()` (its loss on a step's features and logits, and the
    numbers of the step it reports) and `metrics()` (the epoch's, from their sums).
    """

    stats = 0  # how many numbers method_loss() returns besides its loss

    def __init__(self, job: AdaptJob) -> None:
        self.job = job
        strategy = "full" if job.cfg.strategy == "linear_probe" else job.cfg.strategy
        lr = job.learning_rate(DEFAULT_LR)
        self.cfg = replace(
            job.cfg,
            strategy=strategy,
            learning_rate=lr,
            warmup_epochs=0,
            # Features held back at the job's reduced backbone rate never became domain
            # invariant (BENCHMARKS.md, DANN with the published recipe).
            backbone_lr_multiplier=1.0,
        )
        arch = self.cfg.architecture
        self.features = registry.feature_extractor(job.model, arch)
        self.head = registry.head(job.model, arch)
        groups = strategies.param_groups(job.model, self.cfg)
        extra = [p for m in self.extra_modules() for p in m.parameters()]
        if extra:
            groups.append({"params": extra, "lr": lr})
        self.optimizer = torch.optim.SGD(
            groups, lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, nesterov=True
        )
        self.precision = engine.resolve_precision(self.cfg, job.device)
        self.source = engine.ImageInputs(
            job.source_train, self.cfg, job.device, augmentation=self.cfg.augmentation
        )
        self.target = job.target_inputs(self.cfg.augmentation)
        self.epochs = job.epochs(DEFAULT_EPOCHS)
        # An epoch is a pass over the larger domain; the smaller one cycles.
        self.n_steps = -(-max(len(self.source), len(self.target)) // self.cfg.batch_size)
        self.total_steps = self.epochs * self.n_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: (1 + ALPHA * s / self.total_steps) ** -BETA
        )

    # -- what a method adds ---------------------------------------------------

    def extra_modules(self) -> list[nn.Module]:
        return []

    def method_loss(
        self, feats: torch.Tensor, logits: torch.Tensor, n_source: int, progress: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def metrics(self, sums: list[float], seen: int, epoch: int) -> dict[str, float]:
        raise NotImplementedError

    # -- the loop ---------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        for epoch in range(1, self.epochs + 1):
            self.job.record("epoch", epoch, self.epochs, self.epoch(epoch))
        return self.job.history

    def epoch(self, epoch: int) -> dict[str, float]:
        strategies.configure_epoch(self.job.model, self.cfg, epoch)
        for m in self.extra_modules():
            m.train()
        # Summed on the device, read once per epoch: classification loss, method loss, stats.
        sums = torch.zeros(2 + self.stats, device=self.job.device)
        seen = 0
        src, tgt = (
            cycled_batches(len(d), self.cfg.batch_size, self.cfg.seed + i, epoch, self.n_steps)
            for i, d in enumerate((self.source, self.target))
        )
        for step, (s_idx, t_idx) in enumerate(zip(src, tgt, strict=True)):
            self.job.check_stop(epoch, step)
            progress = ((epoch - 1) * self.n_steps + step) / self.total_steps
            sums += self.step(s_idx, t_idx, epoch, step, progress)
            seen += len(s_idx) + len(t_idx)
        values = sums.tolist()
        return {
            "classification_loss": values[0] / self.n_steps,
            **self.metrics(values[1:], seen, epoch),
            "learning_rate": self.optimizer.param_groups[-1]["lr"],
        }

    def progress(self, epoch: int) -> float:
        return epoch * self.n_steps / self.total_steps

    def step(
        self, s_idx: np.ndarray, t_idx: np.ndarray, epoch: int, step: int, progress: float
    ) -> torch.Tensor:
        x_s, y_s = self.source.batch(s_idx, epoch, step)
        # Another step index than the source's, so the two batches draw different crops.
        x_t, _ = self.target.batch(t_idx, epoch, self.n_steps + step)
        with self.precision.autocast():
            feats = self.features(torch.cat([x_s, x_t]))
            logits = self.head(feats)
            cls_loss = nn.functional.cross_entropy(
                logits[: len(x_s)], y_s, label_smoothing=self.cfg.label_smoothing
            )
            loss, stats = self.method_loss(feats, logits, len(x_s), progress)
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.scaler.scale(cls_loss + loss).backward()
        self.precision.scaler.step(self.optimizer)
        self.precision.scaler.update()
        self.scheduler.step()
        return torch.cat([cls_loss.float().reshape(1), loss.float().reshape(1), stats]).detach()
