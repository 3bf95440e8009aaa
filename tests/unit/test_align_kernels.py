"""Alignment kernels: warping, masked NCC block matching, voting, stitching, rendering."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.align import ncc
from pipeline.align.blocks import (
    blocks,
    crossfade,
    crossfade_weight,
    global_field,
    order,
    stitch,
    targets,
)
from pipeline.align.fields import ClassicalFieldModel, ClassicalParams, lcn, vote
from pipeline.align.jobs import AlignParams, render_job
from pipeline.align.render import composite, partial_runs
from pipeline.align.volumes import ArrayVolume
from pipeline.align.warp import as_tensor, blur, compose, sample, upsample_field, warp
from pipeline.geometry import Bbox, ChunkGrid
from pipeline.synth import synthesize

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def section() -> np.ndarray:
    return synthesize((128, 128, 1), seed=2).image[..., 0]


def smooth_field(shape, amp=3.0, seed=0, scale=17.0) -> torch.Tensor:
    """A smooth pull field: sinusoids of wavelength about 6 ``scale`` px plus a shift."""
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    f = np.stack([amp * np.sin(gy / scale + rng.uniform(0, 6)) + 1.3,
                  amp * np.cos(gx / (1.3 * scale) + rng.uniform(0, 6)) - 2.6])
    return as_tensor(f, CPU)


def test_warp_is_bilinear_pull_like_grid_sample(section):
    img = as_tensor(section, CPU)
    f = smooth_field(section.shape)
    ours = warp(img, f)
    ref = sample(img[None], f)[0]
    assert torch.allclose(ours, ref, atol=2e-3)
    shifted = warp(img, torch.full((2, 128, 128), 3.0))
    assert torch.equal(shifted[:-3, :-3], img[3:, 3:])          # out(p) = img(p + 3)
    assert float(shifted[-1, -1]) == 0                           # outside: no data
    # compose: pulling twice equals one pull through the composed field
    g = smooth_field(section.shape, 2.0, seed=1)
    soft = blur(img, 2.0)                     # smooth, so that resampling twice is harmless
    twice = warp(warp(soft, g), f)
    once = warp(soft, compose(f, g))
    inner = (slice(12, -12), slice(12, -12))
    err = float((twice - once)[inner].abs().median())
    wrong = float((twice - warp(soft, compose(g, f)))[inner].abs().median())
    assert err < 0.5 < 4 * err < wrong


def test_ncc_recovers_subpixel_translation(section):
    img = as_tensor(section, CPU)
    true = (2.4, -3.7)
    moved = warp(img, as_tensor(np.array(true)[:, None, None] * np.ones((2, 128, 128)), CPU))
    m = torch.ones(128, 128)
    mm = (warp(m, as_tensor(np.array(true)[:, None, None] * np.ones((2, 128, 128)), CPU))
          > 0.999).float()
    # moved(p) = img(p + true): matching img (src) onto moved (tgt) gives d = true
    tf = ncc.match_tiles(lcn(img, m), m, lcn(moved, mm), mm, (0, 0),
                         ncc.MatchParams(tile=32, radius=6))
    d = tf.disp[tf.valid]
    assert len(d) >= 20
    assert torch.allclose(d.median(dim=0).values, torch.tensor(true), atol=0.15)


def test_peak_ratio_rejects_ambiguous_tiles():
    # vertical stripes with period 6: every shift by a period matches as well
    x = np.arange(96)
    stripes = np.tile((128 + 100 * np.sin(2 * np.pi * x / 6))[:, None], (1, 96))
    img = as_tensor(stripes, CPU)
    m = torch.ones(96, 96)
    tf = ncc.match_tiles(lcn(img, m), m, lcn(img, m), m, (0, 0),
                         ncc.MatchParams(tile=32, radius=8))
    assert not bool(tf.valid.any())
    # the same texture with a unique blob is accepted
    rng = np.random.default_rng(0)
    noise = as_tensor(rng.normal(128, 30, (96, 96)), CPU)
    tf2 = ncc.match_tiles(lcn(noise, m), m, lcn(noise, m), m, (0, 0),
                          ncc.MatchParams(tile=32, radius=8))
    # (the corner tile, three quarters outside the image, has too little coverage)
    assert bool(tf2.valid[1:, 1:].all()) and not bool(tf2.valid[0, 0])
    assert float(tf2.disp[tf2.valid].abs().max()) < 0.05


def test_invalid_tiles_are_filled_from_neighbours():
    disp = torch.zeros(4, 4, 2)
    disp[..., 0] = 2.0
    valid = torch.ones(4, 4, dtype=torch.bool)
    valid[1, 1] = valid[3, 3] = False
    disp[1, 1] = disp[3, 3] = 99.0
    tf = ncc.fill_invalid(ncc.TileField(disp, valid, torch.ones(4, 4), (0, 0), 8))
    assert torch.allclose(tf.disp[..., 0], torch.full((4, 4), 2.0))
    none = ncc.fill_invalid(ncc.TileField(disp, torch.zeros(4, 4, dtype=torch.bool),
                                          torch.ones(4, 4), (0, 0), 8))
    assert float(none.disp.abs().max()) == 0 and not torch.isnan(none.disp).any()
    # an outlier among agreeing neighbours is rejected, then filled
    d2 = torch.zeros(5, 5, 2)
    d2[2, 2] = 9.0
    out = ncc.reject_outliers(ncc.TileField(d2, torch.ones(5, 5, dtype=torch.bool),
                                            torch.ones(5, 5), (0, 0), 8), 3.0)
    assert not bool(out.valid[2, 2]) and int(out.valid.sum()) == 24


def test_local_linear_smoothing_keeps_affine_fields():
    gx, gy = np.meshgrid(np.arange(9.0), np.arange(7.0), indexing="ij")
    aff = torch.tensor(np.stack([0.3 * gx - 0.2 * gy + 1, 0.1 * gx + 2], -1),
                       dtype=torch.float32)
    tf = ncc.TileField(aff.clone(), torch.ones(9, 7, dtype=torch.bool), torch.ones(9, 7),
                       (0, 0), 8)
    sm = ncc.smooth_tiles(tf, 2.0)
    assert torch.allclose(sm.disp, aff, atol=0.01)


def test_vote_picks_the_agreeing_pair():
    a = torch.zeros(2, 8, 8)
    b = torch.full((2, 8, 8), 0.2)
    c = torch.full((2, 8, 8), 7.0)
    ones = torch.ones(8, 8, dtype=torch.bool)
    out = vote([a, b, c], [ones, ones, ones])
    assert torch.allclose(out, torch.full((2, 8, 8), 0.1), atol=1e-3)
    # an invalid candidate does not count, whatever its value
    out2 = vote([c, a, b], [~ones, ones, ones])
    assert torch.allclose(out2, torch.full((2, 8, 8), 0.1), atol=1e-3)
    assert torch.equal(vote([c], [ones]), c)


def test_classical_model_recovers_a_smooth_warp(section):
    img = as_tensor(section, CPU)
    w = smooth_field(section.shape, 4.0, scale=40.0)      # wavelength about 250 px
    moved = warp(img, w)                                   # moved(p) = img(p + w(p))
    mm = (warp(torch.ones(128, 128), w) > 0.999).float()
    model = ClassicalFieldModel(ClassicalParams(match=ncc.MatchParams(tile=32, radius=8)))
    f = model(moved, mm, img, torch.ones(128, 128), torch.zeros(2, 128, 128),
              torch.zeros(128, 128), (0, 0))
    # aligned(p) = moved(p + f(p)) = img(p + f + w(p + f)) should be img(p)
    r = (f + sample(w, f, padding="border")).norm(dim=0)[16:-16, 16:-16]
    assert float(r.median()) < 0.5 and not torch.isnan(f).any()


def test_blocks_order_targets_and_stitch():
    bl = blocks(10, 30, 8, 3)
    assert [(b.start, b.own, b.stop) for b in bl] == [(10, 10, 18), (15, 18, 26), (23, 26, 30)]
    assert [b.parity for b in bl] == ["even", "odd", "even"]
    with pytest.raises(ValueError):
        blocks(0, 10, 2, 3)
    valid = np.array([True, False, True, True, True])
    clean = np.array([False, True, True, True, True])
    assert order(valid, clean) == [2, 3, 4, 0]             # anchor: first valid unfolded
    assert targets(4, [2, 3, 0], valid, 3) == [3, 2, 0]
    assert crossfade_weight(16, bl[1]) == pytest.approx(2 / 4)
    # a block whose frame is translated by (5, -2) from the previous block's is corrected
    prev = [torch.full((2, 16, 16), v) for v in (1.0, 2.0)]
    cur = [p - torch.tensor([5.0, -2.0])[:, None, None] for p in prev]
    pad = [torch.nn.functional.pad(c[None], (4, 4, 4, 4), mode="replicate")[0] for c in cur]
    g = stitch(prev, pad, (4, 4))
    assert torch.allclose(g, torch.tensor([5.0, -2.0])[:, None, None].expand(2, 16, 16))
    assert torch.allclose(global_field(g, pad[0], (4, 4)), prev[0])


def test_folded_references_stitch_outliers_and_disagreeing_crossfades_are_passed_over():
    valid = np.ones(8, bool)
    clean = np.array([True, True, True, True, True, False, True, True])
    assert targets(6, [0, 1, 2, 3, 4, 5], valid, 3, clean) == [4, 3, 2]   # not the fold
    assert targets(6, [5], valid, 3, clean) == [5]                 # better than nothing
    assert [(b.start, b.own) for b in blocks(0, 8, 4, 2, clean)] == [(0, 0), (2, 4)]
    assert [(b.start, b.own) for b in blocks(0, 10, 7, 2, clean)] == [(0, 0), (4, 7)]
    # the anchor's correction (5, -2); the other overlap section was matched 10 px off
    prev = [torch.full((2, 8, 8), 1.0), torch.full((2, 8, 8), 2.0)]
    shift = torch.tensor([5.0, -2.0])[:, None, None]
    cur = [prev[0] - shift, prev[1] - shift - torch.tensor([10.0, 0.0])[:, None, None]]
    assert torch.allclose(stitch(prev, cur), shift.expand(2, 8, 8))
    four = stitch([*prev, *prev], [*cur, prev[0] - shift - 0.5, prev[1] - shift - 0.2])
    assert torch.allclose(four, (shift + 0.2).expand(2, 8, 8))     # median of the near ones
    owner, following = torch.zeros(2, 4, 4), torch.zeros(2, 4, 4)
    following[0, 0, 0], following[0, 1, 1], following[0, 2, 2] = 1.0, 3.0, 9.0
    mixed = crossfade(owner, following, 0.5)
    assert mixed[0, 0, 0] == 0.5 and mixed[0, 1, 1] == pytest.approx(0.75)
    assert mixed[0, 2, 2] == 0.0


@pytest.mark.parametrize("scale", [1, 2])
def test_chunked_render_equals_whole_render_exactly(section, scale):
    """A chunk rendered with margin >= max |displacement| + 1 is identical to the same
    pixels of a whole-volume render, also when the field is at a coarser mip."""
    X, Y = section.shape
    stack = np.stack([section, np.roll(section, 5, 0)], -1)
    fx, fy = X // scale, Y // scale
    field = (smooth_field((fx, fy), 6.0 / scale).numpy().transpose(1, 2, 0)[:, :, None, :]
             * np.ones((1, 1, 2, 1))).astype(np.float32)
    image = ArrayVolume(stack)
    fields = ArrayVolume(field)
    p = AlignParams(scale=scale)
    whole = ArrayVolume.empty(image.bounds, "uint8")
    render_job(image, fields, image.bounds, p, whole)
    chunked = ArrayVolume.empty(image.bounds, "uint8")
    for box in ChunkGrid(image.bounds, (48, 40, 1)):
        render_job(image, fields, box, p, chunked)
    assert np.array_equal(whole.data, chunked.data)
    # and the upsampled field of a chunk is the same numbers as the whole one's
    f = as_tensor(field[:, :, 0].transpose(2, 0, 1), CPU)
    a = upsample_field(f, (0, 0), scale, (0, 0), (X, Y))
    b = upsample_field(f[:, 8:, 4:], (8, 4), scale, (40, 24), (30, 50))
    assert torch.equal(a[:, 40:70, 24:74], b)


def test_rendering_composites_a_run_of_partial_sections(section):
    """With composite_partial, every section of a run of partial sections (a hiatus) shows
    the composite: the largest part first, the gaps filled from the smaller ones."""
    full = section[:64, :64]
    a, b = full.copy(), full.copy()
    a[40:] = 0                                               # 62 % of the section
    b[:20] = 0                                               # 69 %
    stack = np.stack([full, a, b, full], -1)
    image = ArrayVolume(stack)
    fields = ArrayVolume.empty(image.bounds, "float32", 2)
    frac = (stack > 0).mean(axis=(0, 1))
    sections = {"partial": (frac > 0.05) & (frac < 0.95), "valid_fraction": frac}
    out = ArrayVolume.empty(image.bounds, "uint8")
    for box in ChunkGrid(image.bounds, (32, 32, 2)):
        render_job(image, fields, box, AlignParams(composite_partial=True), out, sections)
    expect = np.where(b > 0, b, a)
    assert np.array_equal(out.data[..., 1, 0], expect)
    assert np.array_equal(out.data[..., 2, 0], expect)
    assert np.array_equal(out.data[..., 0, 0], full)


def test_composite_of_partial_sections():
    a = np.array([[1, 0], [0, 0]], np.uint8)
    b = np.array([[5, 6], [7, 0]], np.uint8)
    c = np.array([[9, 9], [9, 9]], np.uint8)
    out = composite([a, b, c], [0.25, 0.75, 0.2])
    assert out.tolist() == [[5, 6], [7, 9]]                   # b first, then a, then c
    assert partial_runs(np.array([0, 1, 1, 0, 1, 1, 1, 0, 1], bool), 10) == \
        [[11, 12], [14, 15, 16]]
    box = Bbox.from_shape((2, 2, 1))
    assert box.volume == 4
