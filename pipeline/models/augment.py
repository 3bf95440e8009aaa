"""Training augmentations of the paper's Methods, each a pure function on (Z, Y, X) arrays.

Every augmentation is ``fn(image, labels, rng, **params) -> (image, labels)``: ``image`` is
float32 in [0, 1], ``labels`` an integer segmentation (0 = boundary), ``rng`` a
``numpy.random.Generator``, the only source of randomness; inputs are never modified. The
training targets (affinities) are computed from the returned labels, never transformed
themselves. Geometric augmentations move image and labels together; defect augmentations
change the image only, except lost sections (which remove the same z from both) and the
misalignments (which shift both, so targets follow the displaced tissue). Slip interpolation
shifts a section of the image only: the net learns to see through slips.

**Mutual exclusion (our reading of the paper).** The section-defect family (misalignment,
missing section, out-of-focus, misalignment + missing, lost section, lost + missing, slip
interpolation) simulates one defect per sample: the paper lists the combined defects as
augmentations of their own precisely because the single ones are not stacked. So
:func:`augment` applies at most one of them per sample (chosen uniformly among the enabled ones
with probability ``p_defect``). Flip/rotate, warping and brightness/contrast are independent of
everything. Order: flip/rotate, warping, brightness/contrast, then the defect (so a missing
section stays black).

Misalignments roll sections by up to ``d_max`` voxels and lost sections shorten z by up to 2,
so samples are drawn larger (:func:`sample_shape`) and centre-cropped to the patch afterwards
(:func:`center_crop`): the rolled-in edge never reaches the patch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

Arrays = tuple[np.ndarray, np.ndarray]
Augmentation = Callable[..., Arrays]


# --- flip / rotate --------------------------------------------------------------------------
def dihedral(a: np.ndarray, element: int) -> np.ndarray:
    """Apply element 0..15 of (dihedral group of the xy square) × (z-flip) to (..., Z, Y, X).

    Bits of ``element``: 1 transposes x and y, 2 flips x, 4 flips y, 8 flips z (in that order).
    The 8 elements without bit 8 are the square's 4 rotations and 4 reflections.
    """
    if not 0 <= element < 16:
        raise ValueError(f"dihedral element must be in 0..15, got {element}")
    if element & 1:
        a = np.swapaxes(a, -1, -2)
    if element & 2:
        a = a[..., ::-1]
    if element & 4:
        a = a[..., ::-1, :]
    if element & 8:
        a = a[..., ::-1, :, :]
    return np.ascontiguousarray(a)


def flip_rotate(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                element: int | None = None) -> Arrays:
    """One of the 16 flip/rotate configurations (random unless ``element`` is given), applied to
    image and labels alike. Transposing needs a square xy sample (see :func:`sample_shape`)."""
    e = int(rng.integers(16)) if element is None else element
    return dihedral(image, e), dihedral(labels, e)


# --- intensity --------------------------------------------------------------------------------
def brightness_contrast(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                        contrast: float = 0.3, brightness: float = 0.3, gamma: float = 1.0,
                        per_section: bool = True) -> Arrays:
    """Scale contrast by 1 ± ``contrast``/2, shift by ± ``brightness``/2, clip to [0, 1], then
    raise to 2**(± ``gamma``); independently per section when ``per_section``. Labels unchanged.
    """
    n = image.shape[0] if per_section else 1
    c = 1 + (rng.random(n) - 0.5) * contrast
    b = (rng.random(n) - 0.5) * brightness
    g = 2.0 ** ((rng.random(n) * 2 - 1) * gamma)
    shape = (n, 1, 1)
    out = np.clip(image * c.reshape(shape) + b.reshape(shape), 0, 1)
    return (out ** g.reshape(shape)).astype(np.float32), labels.copy()


# --- warping ------------------------------------------------------------------------------------
def warp(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
         rotation: float = np.pi, scale: float = 0.1, shear: float = 0.1,
         elastic: float = 2.0, sigma: float = 6.0, image_order: int = 1) -> Arrays:
    """A random smooth xy warp shared by all sections: an affine map (rotation ± ``rotation``,
    scales 1 ± ``scale``, shear ± ``shear``) about the centre plus an elastic displacement
    (Gaussian-smoothed noise of ``sigma`` voxels, up to about ``elastic`` voxels). The image is
    resampled with spline order ``image_order``, the labels with nearest neighbour; both
    reflect at the edges."""
    _, Y, X = image.shape
    t = rng.uniform(-rotation, rotation)
    s = 1 + rng.uniform(-scale, scale, 2)
    sh = rng.uniform(-shear, shear)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    mat = rot @ np.array([[1.0, sh], [0.0, 1.0]]) @ np.diag(s)
    yy, xx = np.mgrid[0:Y, 0:X].astype(np.float64)
    cy, cx = (Y - 1) / 2, (X - 1) / 2
    src = mat @ np.stack([(yy - cy).ravel(), (xx - cx).ravel()])
    disp = []
    for _ in range(2):
        d = ndimage.gaussian_filter(rng.standard_normal((Y, X)), sigma)
        disp.append(d / (np.abs(d).max() + 1e-12) * elastic)
    sy = src[0].reshape(Y, X) + cy + disp[0]
    sx = src[1].reshape(Y, X) + cx + disp[1]
    coords = np.stack([sy, sx])
    img = np.stack([ndimage.map_coordinates(sec, coords, order=image_order, mode="reflect")
                    for sec in image]).astype(np.float32)
    lab = np.stack([ndimage.map_coordinates(sec, coords, order=0, mode="reflect")
                    for sec in labels]).astype(labels.dtype)
    return img, lab


# --- section defects ----------------------------------------------------------------------------
def _offset(rng: np.random.Generator, d_max: int) -> tuple[int, int]:
    """A nonzero (dy, dx) with each component in [-d_max, d_max]."""
    while True:
        dy, dx = (int(v) for v in rng.integers(-d_max, d_max + 1, 2))
        if dy or dx or d_max == 0:
            return dy, dx


def _roll(a: np.ndarray, zs: slice, d: tuple[int, int]) -> np.ndarray:
    out = a.copy()
    out[zs] = np.roll(a[zs], d, axis=(-2, -1))
    return out


def misalign(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
             d_max: int = 8, kind: str | None = None, z: int | None = None) -> Arrays:
    """Misalignment by up to ``d_max`` voxels in x and y: a *slip* displaces section ``z`` only,
    a *step* every section from ``z`` on. Image and labels move together."""
    kind = kind or ("slip", "step")[int(rng.integers(2))]
    Z = image.shape[0]
    z = int(rng.integers(1, Z - 1 if kind == "slip" else Z)) if z is None else z
    d = _offset(rng, d_max)
    zs = slice(z, z + 1) if kind == "slip" else slice(z, Z)
    return _roll(image, zs, d), _roll(labels, zs, d)


def slip_interpolation(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                       d_max: int = 8, z: int | None = None) -> Arrays:
    """A slip of the *image* only: section ``z`` moves, the labels (targets) stay aligned."""
    z = int(rng.integers(1, image.shape[0] - 1)) if z is None else z
    return _roll(image, slice(z, z + 1), _offset(rng, d_max)), labels.copy()


def _partial_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A random half-plane of a (Y, X) section: the side of a random line through it."""
    Y, X = shape
    phi = rng.uniform(0, 2 * np.pi)
    py, px = rng.uniform(0.25, 0.75) * Y, rng.uniform(0.25, 0.75) * X
    yy, xx = np.mgrid[0:Y, 0:X]
    return (yy - py) * np.sin(phi) + (xx - px) * np.cos(phi) > 0


def missing_section(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                    double: bool | None = None, partial: bool | None = None,
                    z: int | None = None, fill: float = 0.0) -> Arrays:
    """Blank one (or, if ``double``, two consecutive) sections of the image with ``fill``:
    the whole section, or a random half of it when ``partial``. Labels unchanged."""
    double = bool(rng.random() < 0.5) if double is None else double
    partial = bool(rng.random() < 0.5) if partial is None else partial
    n = 2 if double else 1
    Z = image.shape[0]
    z = int(rng.integers(1, max(2, Z - n))) if z is None else z
    out = image.copy()
    mask = _partial_mask(rng, image.shape[1:]) if partial else np.ones(image.shape[1:], bool)
    for k in range(z, min(z + n, Z)):
        out[k][mask] = fill
    return out, labels.copy()


def out_of_focus(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                 sigma_max: float = 5.0, z: int | None = None) -> Arrays:
    """Blur one section of the image (Gaussian, sigma in [1, ``sigma_max``]). Labels unchanged.
    """
    z = int(rng.integers(1, image.shape[0] - 1)) if z is None else z
    out = image.copy()
    out[z] = ndimage.gaussian_filter(image[z], rng.uniform(1.0, sigma_max), mode="reflect")
    return out, labels.copy()


def misalign_missing(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                     d_max: int = 8) -> Arrays:
    """A misalignment (slip or step) at section z whose section z is also missing (blank)."""
    z = int(rng.integers(1, image.shape[0] - 1))
    image, labels = misalign(image, labels, rng, d_max, z=z)
    return missing_section(image, labels, rng, double=False, partial=False, z=z)


def lost_section(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                 double: bool | None = None, z: int | None = None) -> Arrays:
    """Remove one (or two consecutive) sections from image *and* labels: the same z goes
    from both, so z shrinks by 1 or 2. The first and last sections are kept."""
    double = bool(rng.random() < 0.5) if double is None else double
    n = 2 if double else 1
    nz = image.shape[0]
    if nz < n + 2:
        raise ValueError(f"lost_section needs at least {n + 2} sections, got {nz}")
    z = int(rng.integers(1, nz - n)) if z is None else z
    gone = list(range(z, z + n))
    return np.delete(image, gone, axis=0), np.delete(labels, gone, axis=0)


def lost_missing(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                 double: bool | None = None) -> Arrays:
    """A lost section (single or double) next to a missing one: after the removal, the
    section just before or just after the gap is blanked in the image."""
    double = bool(rng.random() < 0.5) if double is None else double
    Z = image.shape[0]
    z = int(rng.integers(1, Z - (2 if double else 1)))
    image, labels = lost_section(image, labels, rng, double=double, z=z)
    side = z - 1 if rng.random() < 0.5 else z
    return missing_section(image, labels, rng, double=False, partial=False, z=side)


# --- the registry and the per-sample policy -------------------------------------------------
INDEPENDENT: dict[str, Augmentation] = {
    "flip_rotate": flip_rotate,
    "warp": warp,
    "brightness_contrast": brightness_contrast,
}
DEFECTS: dict[str, Augmentation] = {
    "misalign": misalign,
    "missing_section": missing_section,
    "out_of_focus": out_of_focus,
    "misalign_missing": misalign_missing,
    "lost_section": lost_section,
    "lost_missing": lost_missing,
    "slip_interpolation": slip_interpolation,
}
ALL: tuple[str, ...] = (*INDEPENDENT, *DEFECTS)
"""Every augmentation name, in the order :func:`augment` applies them."""
_USES_DMAX = ("misalign", "misalign_missing", "slip_interpolation")


def sample_shape(patch_zyx: Sequence[int], names: Sequence[str], d_max: int = 8,
                 ) -> tuple[int, int, int]:
    """The (Z, Y, X) sample to draw so that ``names`` can act and a centre crop of
    ``patch_zyx`` remains: +2 sections for lost sections, +``d_max`` voxels on each xy side
    for misalignments, a square xy for flip/rotate (transposition)."""
    z, y, x = (int(v) for v in patch_zyx)
    if "lost_section" in names or "lost_missing" in names:
        z += 2
    if "flip_rotate" in names:
        y = x = max(y, x)
    if any(n in names for n in _USES_DMAX):
        y, x = y + 2 * d_max, x + 2 * d_max
    return z, y, x


def center_crop(a: np.ndarray, shape_zyx: Sequence[int]) -> np.ndarray:
    """The centred (Z, Y, X) window of ``a`` (..., Z, Y, X) of ``shape_zyx``."""
    lead = a.ndim - 3
    sl = []
    for n, want in zip(a.shape[lead:], shape_zyx, strict=True):
        if want > n:
            raise ValueError(f"cannot crop {a.shape[lead:]} to {tuple(shape_zyx)}")
        lo = (n - want) // 2
        sl.append(slice(lo, lo + want))
    return a[(Ellipsis, *sl)]


def augment(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
            names: Sequence[str] = ALL, patch_zyx: Sequence[int] | None = None, *,
            p_independent: float = 0.5, p_defect: float = 0.5, d_max: int = 8,
            ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Augment one sample: each independent augmentation in ``names`` with probability
    ``p_independent`` (flip/rotate always: it draws one of its 16 elements, identity included),
    then at most one defect of ``names`` with probability ``p_defect``; then centre-crop to
    ``patch_zyx``. Return (image, labels, names applied)."""
    unknown = [n for n in names if n not in ALL]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; known: {list(ALL)}")
    applied = []
    for name, fn in INDEPENDENT.items():
        if name in names and (name == "flip_rotate" or rng.random() < p_independent):
            image, labels = fn(image, labels, rng)
            applied.append(name)
    defects = [n for n in DEFECTS if n in names]
    if defects and rng.random() < p_defect:
        name = defects[int(rng.integers(len(defects)))]
        kwargs = {"d_max": d_max} if name in _USES_DMAX else {}
        image, labels = DEFECTS[name](image, labels, rng, **kwargs)
        applied.append(name)
    if patch_zyx is not None:
        image, labels = center_crop(image, patch_zyx), center_crop(labels, patch_zyx)
    return np.ascontiguousarray(image), np.ascontiguousarray(labels), applied
