"""Host-side augmentations for text-line images: small named ops and the named chains.

Every op takes a uint8 ``[H, W, 3]`` RGB numpy image and an explicit
``rng: np.random.Generator`` (never a global RNG), so a view is a pure function of
(image, rng state): the same seed gives the same view. Ops never write into their input
and may return a view of it (``crop``) or the input itself (identity cases).
A parameter given as a ``(lo, hi)`` pair is sampled uniformly per call; a scalar is used as is.

Chains (``image -> uint8 [height, width, 3]``):

- ``dig_view2``: DiG's strongly augmented view 2 (github.com/ayumiymk/DiG), the official
  imgaug recipe re-implemented with OpenCV;
- ``seqclr_view``: SeqCLR's view (docs/seqclr.md): no flips, no large rotations;
- ``siman_style``: SimAN's style-only augmentation, geometry unchanged (pixel-aligned);
- ``recognition_augment``: a milder ABINet-kind recognition augmentation (this project's own);
- ``dig_recognition_augment``: the DiG release's recognition augmentation (ABINet's ops).

Speed: the chains first shrink an input that is larger than ``work_scale * (height, width)``
per axis (anti-aliased, see ``shrink_to``; aspect not kept, as the final resize does not keep
it either), so every op runs on at most ~4K pixels. Consequence: rotations/shears are applied in the
output's aspect (the angle the model sees) and a crop is upsampled from the shrunk image; set
``work_scale=2`` for more detail at ~4x the pixel cost. Crops are numpy views (no copy) and are
not resized back (imgaug's ``keep_size``): the final resize does that once. The piecewise-affine
warp is a coarse control grid interpolated separably (two tiny matmuls) into dense maps and one
``cv2.remap`` instead of scikit-image's triangle-mesh warp (~20 images/s).
Linear contrast/brightness are one saturating ``cv2.addWeighted``; solarize and hue shifts are
uint8 LUTs (``cv2.LUT``, hue in OpenCV's ``HSV_FULL``); nothing goes through float images except
the noise op. Throughput (one AMD EPYC core, ``cv2.setNumThreads(1)``, text-like 32x128 input):
dig_view2 ~7800/s, seqclr_view ~10500/s, recognition_augment ~6800/s, siman_style (32x64)
~16700/s; from a 100x400 input ~6400, ~8200, ~5800/s.
Normalisation to [-1, 1] happens on the device, not here (docs/interfaces.md).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import cv2
import numpy as np

from sslocr_jax.data import images

__all__ = [
  "Op",
  "to_rgb_uint8",
  "shrink_to",
  "resize",
  "linear_contrast",
  "gaussian_blur",
  "crop",
  "sharpen",
  "rotate",
  "affine",
  "piecewise_affine",
  "perspective",
  "solarize",
  "invert",
  "grayscale",
  "brightness_contrast",
  "color_jitter",
  "random_grayscale",
  "gaussian_noise",
  "motion_blur",
  "downscale",
  "some_of",
  "random_patch_mask",
  "DIG_VIEW2_OPS",
  "SEQCLR_OPS",
  "dig_view2",
  "seqclr_view",
  "siman_style",
  "recognition_augment",
  "dig_recognition_augment",
]

Op = Callable[[np.ndarray, np.random.Generator], np.ndarray]
Range = float | tuple[float, float]

_IDENTITY_LUT = np.arange(256, dtype=np.float32)
_ID_U8 = np.arange(256, dtype=np.uint8)
_INV_U8 = _ID_U8[::-1].copy()


def _sample(rng: np.random.Generator, value: Range) -> float:
  """A scalar as is, a ``(lo, hi)`` pair sampled uniformly."""
  if isinstance(value, (tuple, list)):
    lo, hi = value
    return float(lo) if lo == hi else float(rng.uniform(lo, hi))
  return float(value)


def _lut(table: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(table), 0, 255).astype(np.uint8)


def _scale_shift(image: np.ndarray, scale: float, shift: float) -> np.ndarray:
  """``saturate(round(scale * v + shift))`` in one OpenCV call (faster than building a LUT)."""
  return cv2.addWeighted(image, scale, image, 0.0, shift)


def _gray3(image: np.ndarray) -> np.ndarray:
  """Luminance (0.299 R + 0.587 G + 0.114 B) replicated to 3 channels."""
  return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


# --------------------------------------------------------------------------- input / size


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
  """uint8 ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` -> uint8 ``[H, W, 3]``.

  `images.to_rgb` (the one conversion of the package: RGBA is composited onto a background,
  16-bit scaled down).
  """
  return images.to_rgb(image)


def shrink_to(image: np.ndarray, max_height: int, max_width: int) -> np.ndarray:
  """Shrink each axis that exceeds its maximum (aspect not kept); never enlarges.

  Anti-aliased and fast: exact 2x box averages per axis (OpenCV's integer INTER_AREA fast path)
  while an axis is >= 2x its maximum, then one bilinear resize for the last factor < 2.
  (Plain INTER_AREA with a non-integer factor costs ~170 us for 100x400 -> 32x128; this ~22 us,
  mean abs difference to it < 1 level.)
  """
  h, w = image.shape[:2]
  nh, nw = min(h, max_height), min(w, max_width)
  if (nh, nw) == (h, w):
    return image
  while True:
    fy, fx = (2 if h >= 2 * nh else 1), (2 if w >= 2 * nw else 1)
    if fy == fx == 1:
      break
    h, w = h // fy, w // fx
    image = cv2.resize(image[: h * fy, : w * fx], (w, h), interpolation=cv2.INTER_AREA)
  if (h, w) == (nh, nw):
    return image
  return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)


def resize(
  image: np.ndarray, height: int, width: int, interpolation: int = cv2.INTER_CUBIC
) -> np.ndarray:
  """Resize to exactly ``[height, width]`` (bicubic, aspect not kept); no-op copy-free if equal."""
  if image.shape[:2] == (height, width):
    return image
  return cv2.resize(image, (width, height), interpolation=interpolation)


# --------------------------------------------------------------------------- photometric ops


def linear_contrast(
  image: np.ndarray, rng: np.random.Generator, alpha: Range = (0.5, 1.0)
) -> np.ndarray:
  """imgaug LinearContrast: ``127 + alpha * (v - 127)``, one LUT."""
  a = _sample(rng, alpha)
  return _scale_shift(image, a, 127.0 * (1.0 - a))


def gaussian_blur(
  image: np.ndarray, rng: np.random.Generator, sigma: Range = (0.5, 1.5)
) -> np.ndarray:
  """Gaussian blur, kernel size derived from sigma by OpenCV."""
  s = _sample(rng, sigma)
  if s <= 0:
    return image
  return cv2.GaussianBlur(image, (0, 0), s)


def sharpen(
  image: np.ndarray,
  rng: np.random.Generator,
  alpha: Range = (0.0, 0.5),
  lightness: Range = (0.0, 0.5),
) -> np.ndarray:
  """imgaug Sharpen: kernel ``(1-a)*identity + a*[[-1,-1,-1],[-1,8+L,-1],[-1,-1,-1]]``.

  With the recipes' small lightness the kernel sums to ``1 - a + a*L`` < 1, i.e. it also darkens,
  exactly as the imgaug op used by DiG/SeqCLR does.
  """
  a, light = _sample(rng, alpha), _sample(rng, lightness)
  kernel = np.full((3, 3), -a, np.float32)
  kernel[1, 1] = (1.0 - a) + a * (8.0 + light)
  return cv2.filter2D(image, -1, kernel)


def solarize(
  image: np.ndarray,
  rng: np.random.Generator,
  threshold: Range = (32, 128),
  invert_above_p: float = 0.5,
) -> np.ndarray:
  """imgaug Solarize: invert pixels above the threshold (prob ``invert_above_p``), else below."""
  t = min(max(int(np.ceil(_sample(rng, threshold))), 0), 256)  # first level >= threshold
  if rng.random() < invert_above_p:
    lut = np.concatenate((_ID_U8[:t], _INV_U8[t:]))
  else:
    lut = np.concatenate((_INV_U8[:t], _ID_U8[t:]))
  return cv2.LUT(image, lut)


def invert(image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
  """255 - v (``rng`` unused, accepted for a uniform op signature)."""
  return cv2.bitwise_not(image)


def grayscale(image: np.ndarray, rng: np.random.Generator, alpha: Range = (0.0, 1.0)) -> np.ndarray:
  """imgaug Grayscale: blend towards the luminance image by ``alpha`` (1 = fully gray)."""
  a = _sample(rng, alpha)
  if a <= 0:
    return image
  return cv2.addWeighted(_gray3(image), a, image, 1.0 - a, 0.0)


def brightness_contrast(
  image: np.ndarray,
  rng: np.random.Generator,
  brightness: Range = (-0.3, 0.3),
  contrast: Range = (0.6, 1.4),
) -> np.ndarray:
  """``contrast * (v - 127.5) + 127.5 + 255 * brightness``, one LUT."""
  b, c = _sample(rng, brightness), _sample(rng, contrast)
  return _scale_shift(image, c, 127.5 * (1.0 - c) + 255.0 * b)


def _factor(rng: np.random.Generator, strength: float) -> float:
  return float(rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength))


@functools.lru_cache(maxsize=256)
def _hue_lut(shift: int) -> np.ndarray:
  """3-channel LUT adding ``shift`` (mod 256) to channel 0 (H of HSV_FULL) only."""
  lut = np.empty((256, 1, 3), np.uint8)
  lut[:, 0, 0] = (np.arange(256) + shift) % 256
  lut[:, 0, 1] = lut[:, 0, 2] = np.arange(256)
  lut.setflags(write=False)
  return lut


def color_jitter(
  image: np.ndarray,
  rng: np.random.Generator,
  brightness: float = 0.4,
  contrast: float = 0.4,
  saturation: float = 0.2,
  hue: float = 0.1,
  p: float = 1.0,
) -> np.ndarray:
  """torchvision ``RandomApply([ColorJitter(b, c, s, h)], p)``: factors sampled like torchvision,
  the four changes applied in a random order.

  brightness ``v*f``; contrast ``f*v + (1-f)*mean(gray)``; saturation ``f*v + (1-f)*gray``;
  hue: shift by ``U(-hue, hue)`` of a turn in HSV (OpenCV's 256-step ``HSV_FULL``).
  """
  if p < 1.0 and rng.random() >= p:
    return image
  for which in rng.permutation(4):
    if which == 0 and brightness > 0:
      image = _scale_shift(image, _factor(rng, brightness), 0.0)
    elif which == 1 and contrast > 0:
      f = _factor(rng, contrast)
      mean = cv2.mean(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))[0]
      image = _scale_shift(image, f, (1.0 - f) * mean)
    elif which == 2 and saturation > 0:
      f = _factor(rng, saturation)
      image = cv2.addWeighted(image, f, _gray3(image), 1.0 - f, 0.0)
    elif which == 3 and hue > 0:
      shift = int(round(rng.uniform(-hue, hue) * 256.0)) % 256
      if shift:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL)
        image = cv2.cvtColor(cv2.LUT(hsv, _hue_lut(shift)), cv2.COLOR_HSV2RGB_FULL)
  return image


def random_grayscale(image: np.ndarray, rng: np.random.Generator, p: float = 0.2) -> np.ndarray:
  """torchvision RandomGrayscale: fully gray (3 channels) with probability ``p``."""
  if rng.random() < p:
    return _gray3(image)
  return image


def gaussian_noise(
  image: np.ndarray, rng: np.random.Generator, sigma: Range = (4.0, 20.0)
) -> np.ndarray:
  """Additive Gaussian noise, std ``sigma`` in uint8 levels, independent per pixel and channel."""
  s = _sample(rng, sigma)
  if s <= 0:
    return image
  noise = rng.standard_normal(image.shape, dtype=np.float32)
  noise *= s
  noise += image
  return np.clip(noise, 0, 255, out=noise).astype(np.uint8)


def motion_blur(
  image: np.ndarray,
  rng: np.random.Generator,
  kernel_size: tuple[int, int] = (3, 7),
  angle: Range = (0, 180),
) -> np.ndarray:
  """Linear motion blur: a normalised line kernel of odd length ``kernel_size`` at a random angle."""
  k = int(rng.integers(kernel_size[0] // 2, kernel_size[1] // 2 + 1)) * 2 + 1
  if k < 3:
    return image
  kernel = np.zeros((k, k), np.float32)
  kernel[k // 2, :] = 1.0
  m = cv2.getRotationMatrix2D(((k - 1) / 2.0, (k - 1) / 2.0), _sample(rng, angle), 1.0)
  kernel = cv2.warpAffine(kernel, m, (k, k))
  kernel /= max(float(kernel.sum()), 1e-6)
  return cv2.filter2D(image, -1, kernel)


def downscale(image: np.ndarray, rng: np.random.Generator, scale: Range = (0.3, 0.8)) -> np.ndarray:
  """Deterioration: shrink by ``scale`` (INTER_AREA) and enlarge back (bilinear)."""
  s = _sample(rng, scale)
  h, w = image.shape[:2]
  size = (max(1, round(w * s)), max(1, round(h * s)))
  small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
  return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


# --------------------------------------------------------------------------- geometric ops


def crop(
  image: np.ndarray,
  rng: np.random.Generator,
  top: Range = (0.0, 0.3),
  right: Range = (0.0, 0.1),
  bottom: Range = (0.0, 0.3),
  left: Range = (0.0, 0.1),
) -> np.ndarray:
  """imgaug Crop(percent=(top, right, bottom, left)): fractions per side, sampled independently.

  Returns a view (no copy) of at least 1x1 pixels; it is NOT resized back to the input size
  (imgaug's ``keep_size``): the chains' final resize does that.
  """
  h, w = image.shape[:2]
  sides = ((top, h), (right, w), (bottom, h), (left, w))
  t, r, b, l = (int(round(_sample(rng, v) * n)) for v, n in sides)
  t, b = min(t, h - 1), min(b, max(h - 1 - t, 0))
  l, r = min(l, w - 1), min(r, max(w - 1 - l, 0))
  return image[t : h - b, l : w - r]


def affine(
  image: np.ndarray,
  rng: np.random.Generator,
  degrees: Range = 0.0,
  shear: Range = 0.0,
  scale: Range = 1.0,
  expand: bool = False,
) -> np.ndarray:
  """Rotation (degrees, positive = counter-clockwise on screen, as ``cv2.getRotationMatrix2D``),
  horizontal shear (degrees) and isotropic scale about the image centre; border replicated,
  bilinear. Same output size, or with ``expand`` the canvas grown (never shrunk) to hold the
  whole warped image, as ABINet's CVRandomRotation: a 4:1 line rotated 12 degrees in its own
  frame loses the ends of its first and last characters while its label keeps them."""
  h, w = image.shape[:2]
  angle = np.deg2rad(_sample(rng, degrees))
  sh, sc = np.tan(np.deg2rad(_sample(rng, shear))), _sample(rng, scale)
  cos, sin = np.cos(angle), np.sin(angle)
  # A = scale * R(angle) @ Shear_x(sh), mapping source (centred) -> output (centred); y points down.
  a = sc * np.array([[cos, cos * sh + sin], [-sin, cos - sin * sh]], np.float64)
  cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
  m = np.empty((2, 3), np.float64)
  m[:, :2] = a
  m[:, 2] = np.array([cx, cy]) - a @ np.array([cx, cy])
  out_w, out_h = w, h
  if expand:
    half = np.abs(a) @ np.array([w / 2.0, h / 2.0])  # half extents of the warped box
    out_w, out_h = max(w, int(np.ceil(2 * half[0]))), max(h, int(np.ceil(2 * half[1])))
    m[:, 2] += np.array([(out_w - w) / 2.0, (out_h - h) / 2.0])
  return cv2.warpAffine(
    image, m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
  )


def rotate(
  image: np.ndarray, rng: np.random.Generator, degrees: Range = (-10.0, 10.0)
) -> np.ndarray:
  """imgaug Rotate: rotation about the centre, same size; border replicated (imgaug: black)."""
  h, w = image.shape[:2]
  m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), _sample(rng, degrees), 1.0)
  return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _interp_matrix(n_out: int, n_ctrl: int) -> np.ndarray:
  """``[n_out, n_ctrl]`` linear-interpolation weights from ``n_ctrl`` control points spread
  evenly over ``0 .. n_out-1`` (first and last on the borders) to every pixel."""
  pos = np.arange(n_out, dtype=np.float64) * ((n_ctrl - 1) / max(n_out - 1, 1))
  i0 = np.minimum(np.floor(pos).astype(np.int64), n_ctrl - 2)
  t = pos - i0
  m = np.zeros((n_out, n_ctrl), np.float32)
  m[np.arange(n_out), i0] = 1.0 - t
  m[np.arange(n_out), i0 + 1] = t
  return m


@functools.lru_cache(maxsize=512)
def _warp_grid(h: int, w: int, nr: int, nc: int) -> tuple[np.ndarray, ...]:
  """Cached per shape: ``Ry [h, nr]``, ``Rx^T [nc, w]``, control rows ``[nr, 1]`` and columns
  ``[1, nc]`` in pixels. Read-only."""
  arrays = (
    _interp_matrix(h, nr),
    np.ascontiguousarray(_interp_matrix(w, nc).T),
    np.linspace(0.0, h - 1.0, nr, dtype=np.float32)[:, None],
    np.linspace(0.0, w - 1.0, nc, dtype=np.float32)[None, :],
  )
  for a in arrays:
    a.setflags(write=False)
  return arrays


def piecewise_affine(
  image: np.ndarray,
  rng: np.random.Generator,
  scale: Range = (0.03, 0.04),
  rows: int | tuple[int, int] = 4,
  cols: int | tuple[int, int] = 4,
) -> np.ndarray:
  """Fast stand-in for imgaug PiecewiseAffine(scale, nb_rows, nb_cols, mode='edge').

  A ``rows x cols`` grid of control points (on the borders and evenly between) is jittered by
  ``N(0, scale) * (H, W)`` per axis, clipped to the image (as imgaug does); the displaced
  positions are where each output control point samples the input. Dense maps are the bilinear
  interpolation of the grid, computed separably as ``Ry @ grid @ Rx^T`` with cached weight
  matrices, then one ``cv2.remap`` (bilinear, border replicated). ``scale=0`` is the identity.
  ``rows``/``cols`` may be ``(lo, hi)`` integer ranges (inclusive).
  """
  h, w = image.shape[:2]
  s = _sample(rng, scale)
  nr = int(rng.integers(rows[0], rows[1] + 1)) if isinstance(rows, (tuple, list)) else int(rows)
  nc = int(rng.integers(cols[0], cols[1] + 1)) if isinstance(cols, (tuple, list)) else int(cols)
  nr, nc = max(2, nr), max(2, nc)
  ry, rx_t, gy, gx = _warp_grid(h, w, nr, nc)
  jitter = rng.standard_normal((2, nr, nc), dtype=np.float32)
  src_y = np.clip(gy + jitter[0] * (s * h), 0.0, h - 1.0)
  src_x = np.clip(gx + jitter[1] * (s * w), 0.0, w - 1.0)
  map_y = (ry @ src_y) @ rx_t
  map_x = (ry @ src_x) @ rx_t
  return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


_CORNERS01 = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)  # TL, TR, BR, BL
_CORNER_SIGNS = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], np.float32)  # inwards


def perspective(
  image: np.ndarray, rng: np.random.Generator, scale: Range = (0.05, 0.1)
) -> np.ndarray:
  """imgaug PerspectiveTransform(scale, keep_size=True): each corner moves inwards by
  ``|N(0, scale)|`` of the width/height (clipped to 0.4); that quadrilateral is warped onto the
  full image (same size), so no border is introduced."""
  h, w = image.shape[:2]
  s = _sample(rng, scale)
  j = np.minimum(np.abs(rng.standard_normal((4, 2), dtype=np.float32)) * s, 0.4)
  j *= _CORNER_SIGNS
  j *= (w - 1.0, h - 1.0)
  out = _CORNERS01 * np.float32((w - 1.0, h - 1.0))
  m = cv2.getPerspectiveTransform(out, out + j)  # output pixel -> input pixel
  return cv2.warpPerspective(
    image, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
  )


# --------------------------------------------------------------------------- composition


def some_of(
  image: np.ndarray,
  rng: np.random.Generator,
  ops: Sequence[tuple[str, Op]],
  min_ops: int,
  max_ops: int | None = None,
) -> np.ndarray:
  """imgaug SomeOf((min_ops, max_ops), ops, random_order=True): a uniformly drawn number of
  distinct ops, applied in a random order. ``max_ops=None`` means all."""
  hi = len(ops) if max_ops is None else min(max_ops, len(ops))
  n = int(rng.integers(min_ops, hi + 1))
  for i in rng.permutation(len(ops))[:n]:
    image = ops[i][1](image, rng)
  return image


def random_patch_mask(
  rng: np.random.Generator, num_patches: int = 256, mask_ratio: float = 0.7
) -> np.ndarray:
  """SimMIM mask: bool ``[num_patches]`` with exactly ``round(mask_ratio * num_patches)`` True
  (179 of 256 for 0.7) at random positions."""
  mask = np.zeros(num_patches, dtype=bool)
  mask[rng.permutation(num_patches)[: int(round(mask_ratio * num_patches))]] = True
  return mask


# --------------------------------------------------------------------------- named chains

_p = functools.partial

# DiG view 2 (official imgaug recipe; dig.md): SomeOf(2..5, random order) of these 10.
DIG_VIEW2_OPS: tuple[tuple[str, Op], ...] = (
  ("linear_contrast", _p(linear_contrast, alpha=(0.5, 1.0))),
  ("gaussian_blur", _p(gaussian_blur, sigma=(0.5, 1.5))),
  ("crop_top_bottom", _p(crop, top=(0.0, 0.3), right=0.0, bottom=(0.0, 0.3), left=0.0)),
  ("crop_left_right", _p(crop, top=0.0, right=(0.0, 0.1), bottom=0.0, left=(0.0, 0.1))),
  ("sharpen", _p(sharpen, alpha=(0.0, 0.5), lightness=(0.0, 0.5))),
  ("rotate", _p(rotate, degrees=(-10.0, 10.0))),
  ("piecewise_affine", _p(piecewise_affine, scale=(0.03, 0.04))),
  ("perspective", _p(perspective, scale=(0.05, 0.1))),
  ("solarize", _p(solarize, threshold=(32, 128), invert_above_p=0.5)),
  ("grayscale", _p(grayscale, alpha=(0.0, 1.0))),
)

# SeqCLR (seqclr.md; official imgaug recipe, crops as two separate augmenters):
# SomeOf(1..all, random order). No flips, no rotations.
SEQCLR_OPS: tuple[tuple[str, Op], ...] = (
  ("linear_contrast", _p(linear_contrast, alpha=(0.5, 1.0))),
  ("gaussian_blur", _p(gaussian_blur, sigma=(0.5, 1.5))),
  ("crop_top_bottom", _p(crop, top=(0.0, 0.4), right=0.0, bottom=(0.0, 0.4), left=0.0)),
  ("crop_left_right", _p(crop, top=0.0, right=(0.0, 0.02), bottom=0.0, left=(0.0, 0.02))),
  ("sharpen", _p(sharpen, alpha=(0.0, 0.5), lightness=(0.0, 0.5))),
  ("piecewise_affine", _p(piecewise_affine, scale=(0.02, 0.03))),
  ("perspective", _p(perspective, scale=(0.01, 0.02))),
)


def _prepare(image: np.ndarray, height: int, width: int, work_scale: float) -> np.ndarray:
  image = to_rgb_uint8(image)
  return shrink_to(image, max(1, round(work_scale * height)), max(1, round(work_scale * width)))


def dig_view2(
  image: np.ndarray,
  rng: np.random.Generator,
  height: int = 32,
  width: int = 128,
  work_scale: float = 1.0,
) -> np.ndarray:
  """DiG view 2 -> uint8 ``[height, width, 3]``.

  SomeOf(2..5, random order) of ``DIG_VIEW2_OPS``; resize (bicubic); ColorJitter(0.4, 0.4, 0.2,
  0.1) with p=0.8; RandomGrayscale p=0.2. Inputs larger than ``work_scale * (height, width)`` are
  shrunk first (module docstring).
  """
  image = _prepare(image, height, width, work_scale)
  image = some_of(image, rng, DIG_VIEW2_OPS, 2, 5)
  image = resize(image, height, width)
  image = color_jitter(image, rng, 0.4, 0.4, 0.2, 0.1, p=0.8)
  image = random_grayscale(image, rng, p=0.2)
  return np.ascontiguousarray(image)


def seqclr_view(
  image: np.ndarray,
  rng: np.random.Generator,
  height: int = 32,
  width: int = 128,
  work_scale: float = 1.0,
) -> np.ndarray:
  """SeqCLR view -> uint8 ``[height, width, 3]``: SomeOf(1..all, random order) of ``SEQCLR_OPS``,
  then resize (bicubic). Keeps the reading order (no flips, no rotations)."""
  image = _prepare(image, height, width, work_scale)
  image = some_of(image, rng, SEQCLR_OPS, 1, None)
  return np.ascontiguousarray(resize(image, height, width))


def siman_style(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """SimAN style-only augmentation -> uint8 ``[H, W, 3]`` of the input's size, pixel-aligned.

  Always a strong colour jitter (brightness/contrast/saturation 0.5, hue up to half a turn);
  then, each independently: inversion (p=0.2) or else solarize (p=0.2), grayscale (p=0.2),
  Gaussian blur sigma 0.5..1.5 (p=0.3), Gaussian noise std 2..12 levels (p=0.3).
  Never moves a pixel.
  """
  image = to_rgb_uint8(image)
  image = color_jitter(image, rng, brightness=0.5, contrast=0.5, saturation=0.5, hue=0.5)
  u = rng.random()
  if u < 0.2:
    image = invert(image)
  elif u < 0.4:
    image = solarize(image, rng, threshold=(64, 192))
  if rng.random() < 0.2:
    image = _gray3(image)
  if rng.random() < 0.3:
    image = gaussian_blur(image, rng, sigma=(0.5, 1.5))
  if rng.random() < 0.3:
    image = gaussian_noise(image, rng, sigma=(2.0, 12.0))
  return np.ascontiguousarray(image)


_DETERIORATION_OPS: tuple[Op, ...] = (
  _p(gaussian_noise, sigma=(2.0, 10.0)),
  _p(motion_blur, kernel_size=(3, 5)),
  _p(downscale, scale=(0.4, 0.9)),
)


def recognition_augment(
  image: np.ndarray,
  rng: np.random.Generator,
  height: int = 32,
  width: int = 128,
  work_scale: float = 1.0,
) -> np.ndarray:
  """ABINet-kind recognition augmentation -> uint8 ``[height, width, 3]``, milder geometry.

  - geometry (p=0.5): either affine (rotation +-15 deg, horizontal shear +-15 deg, scale
    0.85..1.1; the canvas grown to keep every character, ``expand``) or perspective (scale
    0.03..0.08), 50/50;
  - deterioration (p=0.5): Gaussian noise (std 2..10), motion blur (kernel 3..5) and
    downscale-upscale (0.4..0.9), in a random order;
  - colour jitter (p=0.5): brightness/contrast/saturation 0.5, hue 0.1;
  then resize (bicubic).
  """
  image = _prepare(image, height, width, work_scale)
  if rng.random() < 0.5:
    if rng.random() < 0.5:
      image = affine(
        image, rng, degrees=(-15.0, 15.0), shear=(-15.0, 15.0), scale=(0.85, 1.1), expand=True
      )
    else:
      image = perspective(image, rng, scale=(0.03, 0.08))
  if rng.random() < 0.5:
    for i in rng.permutation(len(_DETERIORATION_OPS)):
      image = _DETERIORATION_OPS[i](image, rng)
  image = color_jitter(image, rng, 0.5, 0.5, 0.5, 0.1, p=0.5)
  return np.ascontiguousarray(resize(image, height, width))


# --------------------------------------------------------------------------- DiG fine-tuning
# The release's recognition augmentation (ayumiymk/DiG dataset/dataset_lmdb.py `use_abi_aug`,
# ops in transforms.py, ABINet's): CVGeometry(degrees=45, translate=(0, 0), scale=(0.5, 2),
# shear=(45, 15), distortion=0.5, p=0.5), CVDeterioration(var=20, degrees=6, factor=4, p=0.25),
# CVColorJitter(0.5, 0.5, 0.5, 0.1, p=0.25). Ported to numpy/OpenCV with every draw from the
# per-sample ``rng``. One deliberate difference: the release draws the geometry kind and the
# deterioration strengths (noise variance, blur length and angle, rescale factor, op order) once,
# when the transform is built (ABINet's quirk: fixed per data-loader worker); here every image
# draws its own, which is what the recipe's ranges describe.
_INTERPOLATIONS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA)


def sample_sym(rng: np.random.Generator, magnitude: float, size=None):
  """transforms.py ``sample_sym``: ``(Beta(4, 4) - 0.5) * 2 * magnitude``, in (-m, m)."""
  return (rng.beta(4, 4, size) - 0.5) * 2 * magnitude


def sample_asym(rng: np.random.Generator, magnitude: float, size=None):
  """transforms.py ``sample_asym``: ``Beta(1, 4) * magnitude``, in [0, m), mostly small."""
  return rng.beta(1, 4, size) * magnitude


def _interp(rng: np.random.Generator) -> int:
  return _INTERPOLATIONS[int(rng.integers(len(_INTERPOLATIONS)))]


def _bbox_size(points: np.ndarray) -> tuple[int, int, int, int]:
  """(min_x, min_y, max_x, max_y) of ``cv2.boxPoints(cv2.minAreaRect(points))`` as ints."""
  box = cv2.boxPoints(cv2.minAreaRect(points.astype(np.float32))).astype(np.int64)
  return int(box[:, 0].min()), int(box[:, 1].min()), int(box[:, 0].max()), int(box[:, 1].max())


def abinet_rotate(image: np.ndarray, rng: np.random.Generator, degrees: float = 45.0) -> np.ndarray:
  """CVRandomRotation: angle ``sample_sym(degrees)``, the canvas grown to hold the whole
  rotated image, border replicated, random interpolation."""
  h, w = image.shape[:2]
  m = cv2.getRotationMatrix2D((w / 2, h / 2), float(sample_sym(rng, degrees)), 1.0)
  cos, sin = abs(m[0, 0]), abs(m[0, 1])
  dst_w, dst_h = max(1, int(h * sin + w * cos)), max(1, int(h * cos + w * sin))
  m[0, 2] += (dst_w - w) / 2
  m[1, 2] += (dst_h - h) / 2
  return cv2.warpAffine(
    image, m, (dst_w, dst_h), flags=_interp(rng), borderMode=cv2.BORDER_REPLICATE
  )


def abinet_affine(
  image: np.ndarray,
  rng: np.random.Generator,
  degrees: float = 45.0,
  scale: tuple[float, float] = (0.5, 2.0),
  shear: tuple[float, float] = (45.0, 15.0),
) -> np.ndarray:
  """CVRandomAffine (no translation): rotation ``sample_sym(degrees)``, scale ``U(scale)``, shears
  ``sample_sym(shear[0])`` (x), ``sample_sym(shear[1])`` (y); torchvision's inverse RSS matrix,
  the canvas set to the bounding box of the warped corners."""
  h, w = image.shape[:2]
  rot = np.deg2rad(float(sample_sym(rng, degrees)))
  sc = float(rng.uniform(scale[0], scale[1]))
  sx, sy = (
    np.deg2rad(float(sample_sym(rng, shear[0]))),
    np.deg2rad(float(sample_sym(rng, shear[1]))),
  )
  a = np.cos(rot - sy) / np.cos(sy)
  b = -np.cos(rot - sy) * np.tan(sx) / np.cos(sy) - np.sin(rot)
  c = np.sin(rot - sy) / np.cos(sy)
  d = -np.sin(rot - sy) * np.tan(sx) / np.cos(sy) + np.cos(rot)
  m = np.array([[d, -b, 0.0], [-c, a, 0.0]]) / sc
  cx, cy = w / 2, h / 2
  m[0, 2] = m[0, 0] * -cx + m[0, 1] * -cy + cx
  m[1, 2] = m[1, 0] * -cx + m[1, 1] * -cy + cy
  corners = np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1]], np.float64)
  ends = (corners @ m.T).astype(np.int64)
  x0, y0, x1, y1 = _bbox_size(ends)
  dst_w, dst_h = max(1, x1 - x0), max(1, y1 - y0)
  m[0, 2] += (dst_w - w) / 2
  m[1, 2] += (dst_h - h) / 2
  return cv2.warpAffine(
    image, m, (dst_w, dst_h), flags=_interp(rng), borderMode=cv2.BORDER_REPLICATE
  )


def abinet_perspective(
  image: np.ndarray, rng: np.random.Generator, distortion: float = 0.5
) -> np.ndarray:
  """CVRandomPerspective: each corner moves inwards by ``sample_asym(distortion * side / 2)``
  pixels; the result is cropped to the warped quadrilateral's bounding box."""
  h, w = image.shape[:2]
  oh = sample_asym(rng, distortion * h / 2, 4).astype(np.int64)
  ow = sample_asym(rng, distortion * w / 2, 4).astype(np.int64)
  start = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
  end = np.array(
    [
      [ow[0], oh[0]],
      [w - 1 - ow[1], oh[1]],
      [w - 1 - ow[2], h - 1 - oh[2]],
      [ow[3], h - 1 - oh[3]],
    ],
    np.float32,
  )
  m = cv2.getPerspectiveTransform(start, end)
  x0, y0, x1, y1 = _bbox_size(end)
  x0, y0 = max(x0, 0), max(y0, 0)
  out = cv2.warpPerspective(
    image, m, (max(x1, 1), max(y1, 1)), flags=_interp(rng), borderMode=cv2.BORDER_REPLICATE
  )
  out = out[y0:, x0:]
  return out if out.size else image


def abinet_rescale(
  image: np.ndarray,
  rng: np.random.Generator,
  factor: float = 4,
  base_size: tuple[int, int] = (128, 512),
) -> np.ndarray:
  """CVRescale: resize to ``base_size`` (h, w), ``round(U(0, factor))`` pyrDowns, resize back."""
  k = int(round(rng.uniform(0, factor)))
  if k == 0:
    return image
  h, w = image.shape[:2]
  small = cv2.resize(image, (base_size[1], base_size[0]), interpolation=_interp(rng))
  for _ in range(k):
    small = cv2.pyrDown(small)
  return cv2.resize(small, (w, h), interpolation=_interp(rng))


def abinet_noise(image: np.ndarray, rng: np.random.Generator, var: float = 20) -> np.ndarray:
  """CVGaussianNoise: variance ``max(int(sample_asym(var)), 1)`` (std = its square root)."""
  v = max(int(sample_asym(rng, var)), 1)
  noise = rng.normal(0.0, v**0.5, image.shape)
  return np.clip(image + noise, 0, 255).astype(np.uint8)


def abinet_motion_blur(
  image: np.ndarray, rng: np.random.Generator, degrees: float = 6, angle: float = 90
) -> np.ndarray:
  """CVMotionBlur: a line kernel of length ``max(int(sample_asym(degrees)), 1)`` rotated by
  ``U(-angle, angle)``, divided by its length."""
  k = max(int(sample_asym(rng, degrees)), 1)
  m = cv2.getRotationMatrix2D((k // 2, k // 2), float(rng.uniform(-angle, angle)), 1)
  kernel = np.zeros((k, k))
  kernel[k // 2, :] = 1
  kernel = cv2.warpAffine(kernel, m, (k, k)) / k
  return np.clip(cv2.filter2D(image, -1, kernel), 0, 255).astype(np.uint8)


def dig_recognition_augment(
  image: np.ndarray,
  rng: np.random.Generator,
  height: int = 32,
  width: int = 128,
  work_scale: float = 1.0,
) -> np.ndarray:
  """The release's fine-tuning augmentation -> uint8 ``[height, width, 3]``:

  - geometry (p=0.5): one of rotation (up to 45 degrees), affine (rotation 45, scale 0.5..2,
    shear (45, 15)) or perspective (distortion 0.5), each 1/3;
  - deterioration (p=0.25): Gaussian noise (variance up to 20), motion blur (length up to 6)
    and rescale (0..4 pyramid levels from 128x512), in a random order;
  - colour jitter (p=0.25): brightness, contrast, saturation 0.5, hue 0.1;
  then resize (bicubic).
  """
  image = _prepare(image, height, width, work_scale)
  if rng.random() < 0.5:
    kind = rng.random()
    if kind < 0.33:
      image = abinet_rotate(image, rng)
    elif kind < 0.66:
      image = abinet_affine(image, rng)
    else:
      image = abinet_perspective(image, rng)
  if rng.random() < 0.25:
    ops = (abinet_noise, abinet_motion_blur, abinet_rescale)
    for i in rng.permutation(3):
      image = ops[i](image, rng)
  image = color_jitter(image, rng, 0.5, 0.5, 0.5, 0.1, p=0.25)
  return np.ascontiguousarray(resize(image, height, width))
