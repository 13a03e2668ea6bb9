"""The files of a trained model: weights, metadata, exported variants and the bundle.

Pure file work (no SQL): write_model() returns the model row to publish and the job's
report; the runner hands both to the lifecycle service, which records them only while
the job's lease is still held.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from app.architectures import ARCHITECTURES, preprocessing
from app.schemas.jobs import JobCreate
from app.services.job_runs import ModelRecord
from app.storage import atomic_writer, describe_file, write_json
from worker.export.artifacts import FILE_NAMES
from worker.export.bundle import build_bundle
from worker.export.pipeline import export_variants
from worker.export.quantize import pick_calibration
from worker.training.types import FitResult, ImageSet, TrainConfig

QUANTIZATION_FORMATS = {"int8": "onnx-int8", "fp16": "onnx-fp16"}


@dataclass
class Trained:
    result: FitResult
    cfg: TrainConfig
    classes: list[str]
    train: ImageSet
    val: ImageSet
    model: torch.nn.Module  # holding the kept (best, then adapted) weights
    adaptation: dict[str, Any] | None = None  # the domain adaptation report


def requested_formats(spec: JobCreate) -> list[str]:
    return [*spec.export, *(QUANTIZATION_FORMATS[q] for q in spec.quantization)]


def write_model(
    directory: Path, model_id: str, job_id: str, spec: JobCreate, trained: Trained
) -> tuple[ModelRecord, dict[str, Any]]:
    """Write the model's files into `directory`; return its row and the job's report."""
    result, cfg = trained.result, trained.cfg
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / "model.safetensors"
    # The model, not result.state_dict: it holds the best epoch's weights after any
    # domain adaptation the guard accepted.
    state = trained.model.state_dict()
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    with atomic_writer(weights) as fh:
        fh.write(save(tensors, metadata={"architecture": cfg.architecture, "job_id": job_id}))
    prep = preprocessing(ARCHITECTURES[cfg.architecture], cfg.image_size)
    artifacts = [describe_file(weights, "safetensors")]
    export = _export(directory, model_id, spec, trained, prep)
    recommended = "safetensors"
    if export is not None:
        for variant in export["variants"]:
            entry = describe_file(directory / variant["file"], variant["format"])
            artifacts.append({**entry, "report": variant})
        recommended = export["recommended_artifact"]
        artifacts.append(describe_file(directory / "bundle.zip", "bundle"))
    metrics = _model_metrics(result)
    metadata = {
        "model_id": model_id,
        "job_id": job_id,
        "architecture": cfg.architecture,
        "classes": trained.classes,
        "num_classes": len(trained.classes),
        "preprocessing": prep,
        "metrics": metrics,
        "report": result.report,
        "export": export,
        "domain_adaptation": trained.adaptation,
        "recommended_artifact": recommended,
        "spec": spec.model_dump(mode="json"),
        "validation_set": {
            "paths": trained.val.paths,
            "labels": [int(x) for x in trained.val.labels],
        },
        "load": "model = torchvision.models.<architecture>(num_classes=num_classes); "
        "model.load_state_dict(safetensors.torch.load_file('model.safetensors'))",
    }
    write_json(directory / "metadata.json", metadata)
    artifacts.insert(1, describe_file(directory / "metadata.json", "metadata"))
    report = {"best_epoch": result.best_epoch, **result.report}
    if export is not None:
        metrics["export"] = report["export"] = export
    if trained.adaptation is not None:
        metrics["domain_adaptation"] = report["domain_adaptation"] = trained.adaptation
    record = ModelRecord(
        name=f"{cfg.architecture} from {job_id}",
        architecture=cfg.architecture,
        classes=trained.classes,
        preprocessing=prep,
        metrics={**metrics, "report": result.report},
        artifacts=artifacts,
        recommended_artifact=recommended,
    )
    return record, report


def _model_metrics(result: FitResult) -> dict[str, Any]:
    best = next(m for m in result.history if m.epoch == result.best_epoch)
    return {
        "best_epoch": result.best_epoch,
        "val_accuracy": best.val_accuracy,
        "val_loss": best.val_loss,
        "train_accuracy": best.train_accuracy,
        "train_loss": best.train_loss,
        "stopped_early": result.stopped_early,
    }


def _export(
    directory: Path, model_id: str, spec: JobCreate, trained: Trained, prep: dict[str, Any]
) -> dict[str, Any] | None:
    formats = requested_formats(spec)
    if not formats:
        return None
    cfg = trained.cfg
    picked = pick_calibration(trained.train.labels, n=spec.calibration_images, seed=cfg.seed)
    report = export_variants(
        trained.model.cpu().eval(),
        formats=formats,
        image_size=cfg.image_size,
        mean=cfg.mean,
        std=cfg.std,
        class_names=trained.classes,
        calibration_images=trained.train.images[picked],
        val=trained.val,
        out_dir=directory,
        max_accuracy_drop=spec.max_accuracy_drop,
    )
    onnx_files = {v.format: directory / FILE_NAMES[v.format] for v in report.variants}
    build_bundle(
        directory / "bundle.zip",
        onnx_files=onnx_files,
        recommended=report.recommended_artifact,
        class_names=trained.classes,
        preprocessing=prep,
        model_id=model_id,
    )
    return report.as_dict()
