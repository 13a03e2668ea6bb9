"""bench/mnist_m.py renders digits the published MNIST-M way: |patch - 255 * mask|."""

from __future__ import annotations

import numpy as np

from bench.domain_shift import build
from bench.mnist_m import photos, render


def test_the_stroke_inverts_a_photo_patch_and_the_rest_is_the_patch() -> None:
    digits = np.zeros((6, 16, 16), np.uint8)
    digits[:, 4:12, 6:10] = 255  # a bar: the stroke
    out = render(digits, seed=3)
    assert out.shape == (6, 16, 16, 3) and out.dtype == np.uint8
    sources = photos()
    for image in out:
        # Somewhere in one of the photos is the patch: outside the stroke as it is,
        # inside it inverted (255 - patch).
        patch = image.astype(np.int16)
        patch[4:12, 6:10] = 255 - patch[4:12, 6:10]
        assert any(_contains(photo, patch.astype(np.uint8)) for photo in sources)
    # The same seed gives the same images; another, others.
    assert np.array_equal(render(digits, seed=3), out)
    assert not np.array_equal(render(digits, seed=4), out)


def test_the_split_keeps_target_images_apart_and_labelled_for_evaluation_only() -> None:
    d = build(16, seed=0, polarity="mnist_m")
    assert (len(d.source_train), len(d.source_val), len(d.target_train)) == (800, 200, 400)
    assert len(d.target_test) == 1797 - 1400
    assert d.target_test.images.shape[1:] == (16, 16, 3)
    # Disjoint digits: no path of one split in another.
    names = [{p.split("/")[-1] for p in part.paths} for part in (d.source_train, d.target_test)]
    assert not names[0] & names[1]


def _contains(photo: np.ndarray, patch: np.ndarray) -> bool:
    h, w = patch.shape[:2]
    # Candidate positions where the top-left pixel matches, then the whole patch.
    ys, xs = np.nonzero(
        np.all(photo[: photo.shape[0] - h + 1, : photo.shape[1] - w + 1] == patch[0, 0], axis=-1)
    )
    return any(
        np.array_equal(photo[y : y + h, x : x + w], patch) for y, x in zip(ys, xs, strict=True)
    )
