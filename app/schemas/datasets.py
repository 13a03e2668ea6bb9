from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from app.schemas.common import InputModel, Name, OutputModel


class ClassCount(OutputModel):
    name: str = Field(description="The class label (its folder name)", examples=["cat"])
    count: int = Field(description="Images kept in this class", examples=[120])


class Rejected(OutputModel):
    path: str = Field(description="The file's path inside the archive", examples=["cat/broken.jpg"])
    reason: str = Field(
        description="Why it was left out: corrupt_image, not_an_image, unsupported_format, "
        "too_small, too_many_pixels, file_too_large, duplicate, hidden_file, "
        "outside_class_folder",
        examples=["corrupt_image"],
    )
    detail: str | None = Field(
        None,
        description="More about the reason, for a person; null when there is nothing to add",
        examples=["image file is truncated"],
    )


class Warning_(OutputModel):
    code: str = Field(
        description="small_class, empty_class, class_imbalance, missing_in_val, "
        "missing_in_train, conflicting_labels, train_val_leakage",
        examples=["small_class"],
    )
    message: str = Field(
        description="The warning, naming the class",
        examples=["Class 'cat' has 3 images; fewer than 5."],
    )


class NearDuplicate(OutputModel):
    kind: Literal["conflicting_labels", "train_val_leakage"] = Field(
        description="conflicting_labels: the two have different classes; train_val_leakage: "
        "one is in train, the other in val",
        examples=["conflicting_labels"],
    )
    a: str = Field(
        description="One image's path (the first by name)", examples=["images/cat/1.jpg"]
    )
    b: str = Field(description="The other image's path", examples=["images/dog/7.jpg"])
    label_a: str | None = Field(description="The class of `a`", examples=["cat"])
    label_b: str | None = Field(description="The class of `b`", examples=["dog"])
    distance: int = Field(
        description="Bits in which their 64-bit perceptual hashes differ (0 to 4)", examples=[2]
    )


class DatasetRead(OutputModel):
    id: str = Field(description="The dataset's id", examples=["ds_0193a1b2c3d4e5f6a7b8c9d0"])
    name: str = Field(
        description="Given at upload, else the archive's file name", examples=["pets-v1"]
    )
    kind: Literal["labeled", "unlabeled"] = Field(
        description="labeled: class folders, for training; unlabeled: images only, a target "
        "for domain adaptation",
        examples=["labeled"],
    )
    status: Literal["processing", "ready", "failed"] = Field(
        description="processing: still being ingested (poll GET); ready: usable by jobs; "
        "failed: see `error`",
        examples=["ready"],
    )
    num_images: int = Field(
        description="Images kept after ingestion (0 while processing)", examples=[240]
    )
    classes: list[ClassCount] = Field(
        description="Each class with its image count, sorted by name (empty for unlabeled)",
        examples=[[{"name": "cat", "count": 120}, {"name": "dog", "count": 120}]],
    )
    splits: dict[str, int] | None = Field(
        None,
        description="Counts of an explicit train/val layout; null when split per job",
        examples=[{"train": 192, "val": 48}],
    )
    rejected: list[Rejected] = Field(
        description="Files of the archive that were left out, and why",
        examples=[[{"path": "cat/broken.jpg", "reason": "corrupt_image", "detail": None}]],
    )
    warnings: list[Warning_] = Field(
        description="Problems that do not stop training (small or imbalanced classes)",
        examples=[[]],
    )
    near_duplicates: list[NearDuplicate] = Field(
        description="Near-identical images (perceptual hash within 4 bits) under two classes, "
        "or in both train and val; closest first, at most 1,000 (the warnings count them all)",
        examples=[[]],
    )
    error: dict[str, str | None] | None = Field(
        None,
        description="Why ingestion failed ({code, message, param}); null unless status is failed",
        examples=[
            {
                "code": "no_images",
                "message": "The archive holds no valid image (2 files rejected: not_an_image: 2).",
                "param": "file",
            }
        ],
    )
    sha256: str = Field(
        description="SHA-256 of the uploaded archive, lowercase hex",
        examples=["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
    )
    size_bytes: int = Field(description="Bytes of the uploaded archive", examples=[1048576])
    created_at: datetime = Field(
        description="When it was uploaded (UTC, ISO 8601)", examples=["2025-03-14T09:26:53Z"]
    )


class DatasetForm(InputModel):
    """The form fields beside the uploaded file."""

    name: Name | None = Field(
        None,
        description="1-200 printable characters; default the archive's file name",
        examples=["pets-v1"],
    )
    kind: Literal["labeled", "unlabeled"] = Field(
        "labeled",
        description="labeled: class folders; unlabeled: images only (domain adaptation)",
        examples=["labeled"],
    )


class DatasetImageRead(OutputModel):
    path: str = Field(
        description="The image's path in the dataset; pass it to GET …/thumbnail",
        examples=["images/cat/001.jpg"],
    )
    class_name: str | None = Field(
        description="Its class (null in an unlabeled dataset)", examples=["cat"]
    )
    split: Literal["train", "val"] | None = Field(
        description="Its split in an explicit train/val layout; null when split per job",
        examples=["train"],
    )
    width: int = Field(description="Width in pixels, as uploaded", examples=[640])
    height: int = Field(description="Height in pixels, as uploaded", examples=[480])
