"""Augmentations keep input and target consistent; flip/rotate is the 16-element group."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.models import augment as aug
from pipeline.models.affinity import affinity_targets, boundary_to_affinity


def encode(labels: np.ndarray) -> np.ndarray:
    """An image that is a function of the labels: consistency means image == encode(labels)."""
    return ((labels * 37) % 251 / 255.0).astype(np.float32)


@pytest.fixture
def sample():
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:10, 0:24, 0:24]
    labels = (z * 1000 + (y // 5) * 10 + x // 6 + 1).astype(np.int64)  # z is labels // 1000
    labels[rng.random(labels.shape) < 0.05] = 0
    return encode(labels), labels


def test_dihedral_has_16_distinct_elements_and_is_a_group():
    a = np.random.default_rng(1).random((3, 4, 4))
    images = [aug.dihedral(a, e) for e in range(16)]
    assert len({im.tobytes() for im in images}) == 16
    assert np.array_equal(images[0], a)
    for e1, e2 in itertools.product(range(16), repeat=2):  # closed under composition
        both = aug.dihedral(aug.dihedral(a, e1), e2)
        assert any(np.array_equal(both, im) for im in images)
    with pytest.raises(ValueError):
        aug.dihedral(a, 16)


def test_affinities_are_recomputed_from_transformed_labels_not_flipped():
    labels = np.random.default_rng(2).integers(0, 3, (4, 6, 6))
    aff, _ = affinity_targets(labels)
    for e in range(16):
        lab = aug.dihedral(labels, e)
        new, mask = affinity_targets(lab)
        counts = [int(new[c].sum()) for c in range(3)]
        want = [int(aff[c].sum()) for c in range(3)]
        if e & 1:  # transposition swaps the x and y edges
            want[0], want[1] = want[1], want[0]
        assert counts == want, e  # every neighbour pair keeps its affinity
        assert mask[0, :, :, 0].sum() == 0 and mask[2, 0].sum() == 0
    flipped, _ = affinity_targets(labels[..., ::-1])
    # the predecessor becomes the successor: a flipped affinity map is off by one voxel
    assert np.array_equal(flipped[0, ..., 1:], aff[0, ..., ::-1][..., :-1])
    assert not np.array_equal(flipped[0], aff[0, ..., ::-1])


def test_affinity_convention():
    labels = np.array([[[1, 1, 2, 0, 0]]])
    aff, mask = affinity_targets(labels)
    assert aff[0, 0, 0].tolist() == [0, 1, 0, 0, 0]  # boundary-boundary is 0 too
    assert mask[0, 0, 0].tolist() == [0, 1, 1, 1, 1]
    p = np.array([[[0.1, 0.2, 0.9]]], np.float32)
    assert np.allclose(boundary_to_affinity(p)[0, 0, 0], [0, 0.8, 0.1])


@pytest.mark.parametrize("fn", [aug.flip_rotate, aug.misalign,
                                lambda i, lab, r: aug.warp(i, lab, r, image_order=0)])
def test_geometric_augmentations_move_image_and_labels_together(sample, fn):
    image, labels = sample
    before = image.copy(), labels.copy()
    for seed in range(6):
        img, lab = fn(image, labels, np.random.default_rng(seed))
        assert np.array_equal(img, encode(lab))
    assert np.array_equal(image, before[0]) and np.array_equal(labels, before[1])  # pure


def test_misalignment_displaces_by_at_most_d_max(sample):
    image, labels = sample
    for kind in ("slip", "step"):
        _img, lab = aug.misalign(image, labels, np.random.default_rng(3), d_max=2, kind=kind,
                                z=4)
        moved = [z for z in range(10) if not np.array_equal(lab[z], labels[z])]
        assert moved == ([4] if kind == "slip" else list(range(4, 10)))
        hits = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                if np.array_equal(np.roll(labels[4], (dy, dx), (0, 1)), lab[4])]
        assert hits and hits[0] != (0, 0)


@pytest.mark.parametrize("double", [False, True])
def test_lost_section_drops_the_same_z_from_input_and_target(sample, double):
    image, labels = sample
    img, lab = aug.lost_section(image, labels, np.random.default_rng(0), double=double, z=3)
    n = 2 if double else 1
    assert img.shape[0] == lab.shape[0] == 10 - n
    kept = sorted(set(range(10)) - set(range(3, 3 + n)))
    assert [int(v) for v in np.unique(lab // 1000)] == kept
    assert np.array_equal(img, encode(lab))


def test_lost_missing(sample):
    image, labels = sample
    img, lab = aug.lost_missing(image, labels, np.random.default_rng(5))
    assert lab.shape[0] in (8, 9) and img.shape == lab.shape
    blank = [z for z in range(len(img)) if not img[z].any()]
    assert len(blank) == 1
    ok = [z for z in range(len(img)) if z not in blank]
    assert np.array_equal(img[ok], encode(lab)[ok])


def test_slip_interpolation_changes_the_input_only(sample):
    image, labels = sample
    img, lab = aug.slip_interpolation(image, labels, np.random.default_rng(1), d_max=3, z=5)
    assert np.array_equal(lab, labels)
    changed = [z for z in range(10) if not np.array_equal(img[z], image[z])]
    assert changed == [5]
    assert any(np.array_equal(np.roll(image[5], (dy, dx), (0, 1)), img[5])
               for dy in range(-3, 4) for dx in range(-3, 4))


@pytest.mark.parametrize("double,partial", itertools.product([False, True], repeat=2))
def test_missing_section_blanks_the_image_only(sample, double, partial):
    image, labels = sample
    img, lab = aug.missing_section(image, labels, np.random.default_rng(2), double=double,
                                   partial=partial, z=4)
    assert np.array_equal(lab, labels)
    changed = [z for z in range(10) if not np.array_equal(img[z], image[z])]
    assert changed == ([4, 5] if double else [4])
    for z in changed:
        blank = img[z] == 0
        assert blank.all() != partial and blank.any()
        assert np.array_equal(img[z][~blank], image[z][~blank])


def test_out_of_focus_and_misalign_missing(sample):
    image, labels = sample
    img, lab = aug.out_of_focus(image, labels, np.random.default_rng(0), z=2)
    assert np.array_equal(lab, labels)
    assert [z for z in range(10) if not np.array_equal(img[z], image[z])] == [2]
    assert img[2].std() < image[2].std()
    img, lab = aug.misalign_missing(image, labels, np.random.default_rng(4))
    blank = [z for z in range(10) if not img[z].any()]
    assert len(blank) == 1
    ok = [z for z in range(10) if z not in blank]
    assert np.array_equal(img[ok], encode(lab)[ok])
    assert not np.array_equal(lab, labels)


def test_brightness_contrast_keeps_labels(sample):
    image, labels = sample
    img, lab = aug.brightness_contrast(image, labels, np.random.default_rng(0))
    assert np.array_equal(lab, labels) and img.dtype == np.float32
    assert img.min() >= 0 and img.max() <= 1 and not np.array_equal(img, image)


def test_augment_applies_at_most_one_defect_and_crops_to_the_patch(sample):
    image, labels = sample
    patch = (6, 12, 12)
    want = aug.sample_shape(patch, aug.ALL, d_max=2)
    assert want == (8, 16, 16)
    seen = set()
    for seed in range(40):
        img, lab, applied = aug.augment(image[:8, :16, :16], labels[:8, :16, :16],
                                        np.random.default_rng(seed), aug.ALL, patch,
                                        p_defect=0.9, d_max=2)
        assert img.shape == lab.shape == patch
        assert sum(a in aug.DEFECTS for a in applied) <= 1
        seen.update(applied)
    assert set(aug.DEFECTS) <= seen
    a = aug.augment(image, labels, np.random.default_rng(7), aug.ALL, patch)
    b = aug.augment(image, labels, np.random.default_rng(7), aug.ALL, patch)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    with pytest.raises(ValueError, match="unknown augmentation"):
        aug.augment(image, labels, np.random.default_rng(0), ["rotate45"])
