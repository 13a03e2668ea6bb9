"""Layout detection from archive paths alone, and the warnings on class counts."""

from __future__ import annotations

import pytest

from app.errors import InvalidInput
from app.services.layout import Placement, class_warnings, detect_layout


def placed(names: list[str], kind: str = "labeled") -> tuple[str, list[tuple], list[str]]:
    layout = detect_layout(names, kind)  # type: ignore[arg-type]
    rows = [(p.name, p.rel, p.label, p.split) for p in layout.placements]
    return layout.name, rows, layout.outside


def test_class_folders_at_the_root_with_nested_subfolders():
    name, rows, outside = placed(["cat/0.jpg", "cat/indoor/1.jpg", "dog/0.jpg", "notes.txt"])
    assert name == "class_folders"
    assert rows == [
        ("cat/0.jpg", "cat/0.jpg", "cat", None),
        ("cat/indoor/1.jpg", "cat/indoor/1.jpg", "cat", None),
        ("dog/0.jpg", "dog/0.jpg", "dog", None),
    ]
    assert outside == ["notes.txt"]


def test_class_folders_under_one_top_folder():
    name, rows, outside = placed(["pets/cat/0.jpg", "pets/dog/0.jpg", "pets/README.md"])
    assert name == "class_folders"
    assert [(r[1], r[2]) for r in rows] == [("cat/0.jpg", "cat"), ("dog/0.jpg", "dog")]
    assert outside == ["pets/README.md"]


def test_a_file_beside_the_top_folder_is_outside():
    _, rows, outside = placed(["LICENSE", "pets/cat/0.jpg", "pets/dog/0.jpg"])
    assert {r[2] for r in rows} == {"cat", "dog"}
    assert outside == ["LICENSE"]


@pytest.mark.parametrize("top", ["", "data/"])
@pytest.mark.parametrize("val", ["val", "validation", "Val"])
def test_train_val_folders(top, val):
    names = [f"{top}train/cat/0.jpg", f"{top}train/dog/0.jpg", f"{top}{val}/cat/1.jpg"]
    names += [f"{top}train/loose.jpg", f"{top}test/cat/9.jpg"]
    name, rows, outside = placed(names)
    assert name == "train_val"
    assert rows == [
        (f"{top}train/cat/0.jpg", "train/cat/0.jpg", "cat", "train"),
        (f"{top}train/dog/0.jpg", "train/dog/0.jpg", "dog", "train"),
        (f"{top}{val}/cat/1.jpg", f"{val}/cat/1.jpg", "cat", "val"),
    ]
    assert outside == [f"{top}train/loose.jpg", f"{top}test/cat/9.jpg"]


def test_train_and_val_without_class_folders_are_classes():
    name, rows, _ = placed(["train/0.jpg", "val/0.jpg"])
    assert name == "class_folders"
    assert {r[2] for r in rows} == {"train", "val"}


def test_train_alone_is_a_top_folder():
    name, rows, _ = placed(["train/cat/0.jpg", "train/dog/0.jpg"])
    assert name == "class_folders"
    assert [r[1] for r in rows] == ["cat/0.jpg", "dog/0.jpg"]


@pytest.mark.parametrize(
    ("names", "rels"),
    [
        (["photos/a/0.jpg", "photos/1.jpg"], ["a/0.jpg", "1.jpg"]),
        (["a/0.jpg", "b/c/1.jpg", "2.jpg"], ["a/0.jpg", "b/c/1.jpg", "2.jpg"]),
    ],
    ids=["one-top-folder", "mixed-tree"],
)
def test_unlabeled_tree(names, rels):
    name, rows, outside = placed(names, "unlabeled")
    assert name == "unlabeled"
    assert [r[1] for r in rows] == rels
    assert all(r[2] is None and r[3] is None for r in rows)
    assert outside == []


@pytest.mark.parametrize(
    ("names", "code"),
    [
        (["0.jpg", "1.jpg"], "no_class_folders"),
        (["cat/0.jpg", "cat/1.jpg", "2.jpg"], "too_few_classes"),
        (["pets/cat/0.jpg", "pets/cat/1.jpg"], "too_few_classes"),
        (["train/cat/0.jpg", "val/cat/1.jpg"], "too_few_classes"),
    ],
)
def test_labeled_errors(names, code):
    with pytest.raises(InvalidInput) as caught:
        detect_layout(names, "labeled")
    assert caught.value.code == code
    assert caught.value.status_code == 422


def test_placement_is_a_value():
    assert Placement("a/b", "a/b", "a", None) == Placement("a/b", "a/b", "a", None)


# --- warnings ---------------------------------------------------------------------------


def codes(kept, empty=()):
    return [(w.code, w.message) for w in class_warnings(kept, empty)]


def test_balanced_classes_give_no_warning():
    assert codes([("cat", None)] * 5 + [("dog", None)] * 6) == []


def test_small_class_and_imbalance():
    found = codes([("cat", None)] * 60 + [("dog", None)] * 5 + [("owl", None)] * 4)
    assert [c for c, _ in found] == ["small_class", "class_imbalance"]
    assert "'owl' has 4 images" in found[0][1]
    assert "'cat', 60" in found[1][1]
    assert "'owl', 4" in found[1][1]


def test_imbalance_threshold_is_strict():
    assert codes([("cat", None)] * 50 + [("dog", None)] * 5) == []


def test_split_warnings():
    kept = [("cat", "train")] * 5 + [("cat", "val")] * 5 + [("dog", "train")] * 5
    kept += [("owl", "val")] * 5
    found = codes(kept)
    assert found == [
        ("missing_in_val", "Class 'dog' has train images but none in val."),
        ("missing_in_train", "Class 'owl' has val images but none in train."),
    ]


def test_empty_class_warning():
    found = codes([("cat", None)] * 5 + [("dog", None)] * 5, empty={"owl"})
    assert [c for c, _ in found] == ["empty_class"]
    assert "'owl'" in found[0][1]
