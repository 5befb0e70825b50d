"""Unit tests for sslocr_jax.data.augment (ops and named chains)."""

import cv2
import numpy as np
import pytest

from sslocr_jax.data import augment as A


def _text_like(h=48, w=160, seed=0):
  """Light background, dark strokes, a little colour: a stand-in for a text line."""
  rng = np.random.default_rng(seed)
  img = np.full((h, w, 3), (225, 215, 190), np.uint8)
  cv2.putText(
    img, "Text 42", (4, int(h * 0.75)), cv2.FONT_HERSHEY_SIMPLEX, h / 40, (120, 30, 40), 2
  )
  img[: h // 6] = rng.integers(150, 255, (h // 6, w, 3), dtype=np.uint8)
  return img


def _rng(seed):
  return np.random.default_rng(seed)


SIZED_CHAINS = {
  "dig_view2": A.dig_view2,
  "seqclr_view": A.seqclr_view,
  "recognition_augment": A.recognition_augment,
  "dig_recognition_augment": A.dig_recognition_augment,
}
ALL_CHAINS = {**SIZED_CHAINS, "siman_style": A.siman_style}


def _inputs():
  rgb = _text_like()
  gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
  return {
    "rgb": rgb,
    "gray_hw": gray,
    "gray_hw1": gray[:, :, None],
    "large": cv2.resize(rgb, (400, 100)),
    "small": cv2.resize(rgb, (40, 12)),
    "exact": cv2.resize(rgb, (128, 32)),
  }


@pytest.mark.parametrize("name", sorted(ALL_CHAINS))
def test_chain_dtype_shape_and_grayscale(name):
  chain = ALL_CHAINS[name]
  for kind, img in _inputs().items():
    before = img.copy()
    for seed in range(8):
      out = chain(img, _rng(seed))
      expected = (32, 128, 3) if name in SIZED_CHAINS else img.shape[:2] + (3,)
      assert out.dtype == np.uint8, (name, kind)
      assert out.shape == expected, (name, kind, out.shape)
      assert out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(img, before, err_msg=f"{name} modified its {kind} input")


@pytest.mark.parametrize("name", sorted(SIZED_CHAINS))
def test_chain_other_output_size(name):
  out = SIZED_CHAINS[name](_text_like(), _rng(0), height=48, width=96)
  assert out.shape == (48, 96, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("name", sorted(ALL_CHAINS))
def test_chain_deterministic_under_seed(name):
  chain, img = ALL_CHAINS[name], _text_like()
  for seed in (0, 1, 7):
    np.testing.assert_array_equal(chain(img, _rng(seed)), chain(img, _rng(seed)))
  outs = [chain(img, _rng(seed)) for seed in range(6)]
  assert any(not np.array_equal(outs[0], o) for o in outs[1:])
  assert not np.array_equal(chain(img, _rng(0)), chain(img, _rng(1)))


def test_chain_rejects_non_uint8():
  with pytest.raises(TypeError):
    A.dig_view2(np.zeros((32, 128, 3), np.float32), _rng(0))


def test_random_patch_mask():
  masks = [A.random_patch_mask(_rng(seed)) for seed in range(5)]
  for m in masks:
    assert m.shape == (256,) and m.dtype == np.bool_
    assert int(m.sum()) == 179
  assert len({m.tobytes() for m in masks}) == len(masks)
  np.testing.assert_array_equal(A.random_patch_mask(_rng(3)), A.random_patch_mask(_rng(3)))
  assert int(A.random_patch_mask(_rng(0), num_patches=64, mask_ratio=0.5).sum()) == 32


def _marker_centroids(img):
  x = np.arange(img.shape[1], dtype=np.float64)
  r, b = img[..., 0].astype(np.float64), img[..., 2].astype(np.float64)
  red, blue = np.clip(r - b, 0, None).sum(0), np.clip(b - r, 0, None).sum(0)
  assert red.sum() > 0 and blue.sum() > 0
  return (red * x).sum() / red.sum(), (blue * x).sum() / blue.sum()


def test_seqclr_keeps_reading_order():
  img = np.full((32, 128, 3), 128, np.uint8)
  img[4:28, 2:18] = (230, 20, 20)  # red marker at the left
  img[4:28, 110:126] = (20, 20, 230)  # blue marker at the right
  for seed in range(200):
    red_x, blue_x = _marker_centroids(A.seqclr_view(img, _rng(seed)))
    assert red_x < 40 and blue_x > 88 and red_x < blue_x, (seed, red_x, blue_x)


def test_dig_geometric_ops_keep_reading_order():
  # markers away from the edges: DiG's perspective (imgaug semantics) zooms in by up to ~25%
  img = np.full((32, 128, 3), 128, np.uint8)
  img[4:28, 28:44] = (230, 20, 20)
  img[4:28, 84:100] = (20, 20, 230)
  geometric = [
    op for name, op in A.DIG_VIEW2_OPS if name in ("rotate", "piecewise_affine", "perspective")
  ]
  for seed in range(50):
    for op in geometric:
      red_x, blue_x = _marker_centroids(op(img, _rng(seed)))
      assert red_x + 20 < blue_x, (seed, red_x, blue_x)


def _grad_mag(img):
  x = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 1.0)
  return np.hypot(cv2.Sobel(x, cv2.CV_32F, 1, 0), cv2.Sobel(x, cv2.CV_32F, 0, 1)).sum(-1)


def _corr(a, b):
  a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
  return float(a @ b / np.sqrt((a @ a) * (b @ b) + 1e-12))


def test_siman_style_keeps_geometry_and_changes_colours():
  img = np.full((32, 64, 3), (210, 200, 180), np.uint8)
  img[8:24, 10:30] = (30, 40, 120)
  img[4:28, 40:56] = (150, 20, 20)
  shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
  refs = {s: _grad_mag(np.roll(img, s, axis=(0, 1))) for s in shifts}
  corrs, diffs = [], []
  for seed in range(60):
    out = A.siman_style(img, _rng(seed))
    assert out.shape == img.shape
    c = {s: _corr(_grad_mag(out), ref) for s, ref in refs.items()}
    # edges stay where they were: no shifted copy of the original explains the output better
    assert max(c, key=c.get) == (0, 0), (seed, c)
    corrs.append(c[(0, 0)])
    diffs.append(np.abs(out.astype(np.int32) - img).mean())
  assert np.median(corrs) > 0.95
  assert min(diffs) > 2.0 and np.median(diffs) > 20.0


def test_piecewise_affine_scale_zero_is_identity():
  rng = _rng(0)
  for shape in [(32, 128, 3), (17, 53, 3), (2, 2, 3)]:
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    for rows, cols in [(4, 4), (3, (4, 8))]:
      np.testing.assert_array_equal(
        A.piecewise_affine(img, rng, scale=0.0, rows=rows, cols=cols), img
      )
  img = _text_like(32, 128)
  warped = A.piecewise_affine(img, _rng(1), scale=0.04)
  assert warped.shape == img.shape and not np.array_equal(warped, img)


def test_ops_shapes_ranges_and_no_input_mutation():
  img = _text_like(32, 128)
  before = img.copy()
  same_size = [
    A.linear_contrast,
    A.gaussian_blur,
    A.sharpen,
    A.rotate,
    A.affine,
    A.piecewise_affine,
    A.perspective,
    A.solarize,
    A.invert,
    A.grayscale,
    A.brightness_contrast,
    A.color_jitter,
    A.random_grayscale,
    A.gaussian_noise,
    A.motion_blur,
    A.downscale,
  ]
  for op in same_size:
    out = op(img, _rng(0))
    assert out.shape == img.shape and out.dtype == np.uint8, op.__name__
  np.testing.assert_array_equal(img, before)
  for seed in range(20):
    out = A.crop(img, _rng(seed), top=(0, 0.3), right=(0, 0.1), bottom=(0, 0.3), left=(0, 0.1))
    assert 32 * 0.4 - 1 <= out.shape[0] <= 32 and 128 * 0.8 - 1 <= out.shape[1] <= 128
  assert A.crop(img, _rng(0), top=0.6, bottom=0.6, left=0.0, right=0.0).shape[0] >= 1
  np.testing.assert_array_equal(A.invert(A.invert(img)), img)
  np.testing.assert_array_equal(A.rotate(img, _rng(0), degrees=0.0), img)
  np.testing.assert_array_equal(A.linear_contrast(img, _rng(0), alpha=1.0), img)
  gray = A.grayscale(img, _rng(0), alpha=1.0)
  assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])


def test_shrink_to_is_close_to_area_resize():
  big = cv2.resize(_text_like(32, 128), (1000, 200), interpolation=cv2.INTER_CUBIC)
  out = A.shrink_to(big, 32, 128)
  ref = cv2.resize(big, (128, 32), interpolation=cv2.INTER_AREA)
  assert out.shape == (32, 128, 3)
  assert np.abs(out.astype(np.int32) - ref).mean() < 2.0
  small = _text_like(20, 60)
  assert A.shrink_to(small, 32, 128) is small
  assert A.shrink_to(_text_like(64, 60), 32, 128).shape == (32, 60, 3)


def test_release_samplers_stay_in_their_ranges():
  """transforms.py: sample_sym in (-m, m) centred on 0; sample_asym in [0, m), mean m/5."""
  sym, asym = A.sample_sym(_rng(0), 45.0, 20000), A.sample_asym(_rng(1), 20.0, 20000)
  assert np.all(np.abs(sym) < 45.0) and abs(sym.mean()) < 0.5
  assert np.all((asym >= 0) & (asym < 20.0)) and abs(asym.mean() - 4.0) < 0.2


def test_release_ops_keep_the_text_and_follow_their_ranges():
  img = _text_like(32, 128)
  for seed in range(20):
    # rotation / affine grow the canvas to the whole warped line (never crop the text).
    rot = A.abinet_rotate(img, _rng(seed))
    assert rot.shape[0] >= 31 and rot.shape[1] >= 0.7 * 128 and rot.dtype == np.uint8
    aff = A.abinet_affine(img, _rng(seed))
    assert min(aff.shape[:2]) >= 1 and aff.dtype == np.uint8
    # perspective crops at most `distortion * side / 2` from a side.
    per = A.abinet_perspective(img, _rng(seed))
    assert per.shape[0] >= 32 - 8 and per.shape[1] >= 128 - 32
    for op in (A.abinet_noise, A.abinet_motion_blur, A.abinet_rescale):
      assert op(img, _rng(seed)).shape == img.shape
  # noise variance <= 20: the std of the difference stays under sqrt(20).
  diff = A.abinet_noise(img, _rng(3)).astype(np.float32) - img
  assert diff.std() < 20**0.5


def test_release_augmentation_probabilities():
  """Geometry p=0.5, deterioration p=0.25, colour p=0.25: an image is left as the plain
  resize with probability 0.5 * 0.75 * 0.75 = 0.28 (a few ops can be no-ops too)."""
  img = _text_like(32, 128)
  plain = A.resize(img, 32, 128)
  same = np.mean(
    [np.array_equal(A.dig_recognition_augment(img, _rng(s)), plain) for s in range(400)]
  )
  assert 0.22 < same < 0.40, same


def test_affine_expand_keeps_every_ink_pixel():
  """A 4:1 line rotated in its own frame loses its end characters (while the label keeps
  them); `expand=True` (the mild recognition chain's geometry) grows the canvas instead."""
  img = np.full((32, 128, 3), 255, np.uint8)
  img[12:20, 2:10] = 0  # ink at both ends of the line
  img[12:20, 118:126] = 0
  ink = int((img < 128).any(-1).sum())
  for deg in (-15.0, -8.0, 8.0, 15.0):
    kw = dict(degrees=(deg, deg), shear=(0.0, 0.0), scale=(1.0, 1.0))
    same = A.affine(img, _rng(0), **kw)
    grown = A.affine(img, _rng(0), expand=True, **kw)
    assert same.shape == img.shape
    assert grown.shape[1] >= 128 and grown.shape[0] > 32 + 128 * np.sin(np.deg2rad(abs(deg))) - 2
    if abs(deg) == 15.0:  # the ends (62 px from the centre) move 16 px: out of the frame
      assert (same < 128).any(-1).sum() < 0.8 * ink
    assert abs(int((grown < 128).any(-1).sum()) - ink) < 0.25 * ink  # all of it is still there
  # no rotation, shear or scale: identity either way
  kw = dict(degrees=(0.0, 0.0), shear=(0.0, 0.0), scale=(1.0, 1.0))
  np.testing.assert_array_equal(A.affine(img, _rng(0), expand=True, **kw), img)
