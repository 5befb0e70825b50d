"""The one place images are decoded and brought to uint8 RGB (LMDB, TFDS, predict, augment,
create_lmdb).

    decode(buf: bytes) -> uint8 [H, W, 3] RGB     raises DecodeError("empty image (0 bytes)", ...)
    read(path)         -> the same for a file
    to_rgb(image)      -> uint8 [H, W, 3] RGB     from [H, W], [H, W, 1|3|4], uint8 or uint16

Why a buffer does not decode, in the DecodeError's message:

    empty file           "empty image (0 bytes)"
    not an image         "undecodable image (N bytes): not an image (unknown format)"
    truncated / corrupt  "undecodable image (N bytes): truncated or corrupt JPEG"
    huge                 "too large: W x H pixels > MAX_PIXELS" (from the header, before decoding)

Formats OpenCV cannot read (e.g. GIF in some builds) go through Pillow.

Transparency: an RGBA image is composited onto a background before its alpha is dropped. A
transparent background usually stores black (0, 0, 0, 0) pixels, so dropping the alpha of
black text on a transparent background gives an all-black image (issue 18). The background
is white, or black when the opaque pixels are light (white text on a transparent background),
so the text keeps its contrast either way.
"""

import io

import cv2
import numpy as np

MAX_PIXELS = 1 << 26  # 67M pixels (~200 MB as RGB); a text crop is far below, a bomb above


class DecodeError(ValueError):
  """An image buffer that is empty or cannot be decoded (the message says which)."""


def _header(data: bytes):
  """(format, (width, height)) from the file header (no pixel decoding), or (None, None)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  try:
    with Image.open(io.BytesIO(data)) as im:
      return im.format, im.size
  except Image.DecompressionBombError as e:  # over twice Pillow's own limit
    raise DecodeError(f"too large: {e}") from e
  except Exception:  # noqa: BLE001  # Pillow raises many kinds here
    return None, None


def decode(buf) -> np.ndarray:
  """Encoded image bytes (PNG, JPEG, BMP, TIFF, WebP, GIF...) -> uint8 [H, W, 3] RGB.

  Grayscale, palette and 16-bit images are converted; RGBA is composited (`to_rgb`).
  Raises DecodeError for an empty or undecodable buffer.
  """
  data = np.frombuffer(buf, np.uint8) if not isinstance(buf, np.ndarray) else buf.ravel()
  if data.size == 0:
    raise DecodeError("empty image (0 bytes)")
  fmt, size = _header(data.tobytes())
  if size is not None and size[0] * size[1] > MAX_PIXELS:
    raise DecodeError(f"too large: {size[0]} x {size[1]} pixels > {MAX_PIXELS}")
  try:  # IMREAD_UNCHANGED keeps the alpha channel and 16 bits; cv2 raises on some bad input
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
  except cv2.error:
    image = None
  if image is None or image.size == 0:
    return _decode_with_pillow(data, fmt)
  if image.ndim == 3 and image.shape[2] == 3:
    image = image[:, :, ::-1]  # OpenCV's BGR -> RGB
  elif image.ndim == 3 and image.shape[2] == 4:
    image = image[:, :, [2, 1, 0, 3]]  # BGRA -> RGBA
  return to_rgb(image)


def _decode_with_pillow(data: np.ndarray, fmt) -> np.ndarray:
  """What OpenCV could not decode: a format it lacks, else a DecodeError saying why."""
  bad = f"undecodable image ({data.size} bytes)"
  if fmt is None:
    raise DecodeError(f"{bad}: not an image (unknown format)")
  from PIL import Image  # pylint: disable=g-import-not-at-top

  try:
    with Image.open(io.BytesIO(data.tobytes())) as im:
      im.seek(0)
      if im.mode not in ("L", "RGB", "RGBA", "I;16"):  # e.g. P, LA, CMYK
        im = im.convert("RGBA")
      return to_rgb(np.asarray(im))
  except Exception as e:  # Pillow raises many kinds here
    raise DecodeError(f"{bad}: truncated or corrupt {fmt}") from e


def read(path: str) -> np.ndarray:
  """The image file at `path` -> uint8 [H, W, 3] RGB; DecodeError if it is not an image."""
  return decode(np.fromfile(path, np.uint8))


def to_rgb(image) -> np.ndarray:
  """uint8 / uint16 [H, W], [H, W, 1|3|4] -> uint8 [H, W, 3] RGB (RGBA composited)."""
  image = np.asarray(image)
  if image.dtype == np.uint16:
    image = (image >> 8).astype(np.uint8)
  elif image.dtype == np.bool_:
    image = image.astype(np.uint8) * 255
  elif image.dtype != np.uint8:
    raise TypeError(f"expected a uint8 or uint16 image, got {image.dtype}")
  if image.ndim == 3 and image.shape[2] == 1:
    image = image[:, :, 0]
  if image.ndim == 2:
    return np.repeat(image[:, :, None], 3, axis=2)
  if image.ndim != 3 or image.shape[2] not in (3, 4):
    raise ValueError(f"expected an [H, W] or [H, W, 1|3|4] image, got shape {image.shape}")
  if image.shape[2] == 3:
    return np.ascontiguousarray(image)
  return composite(image)


def composite(rgba: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 4] -> [H, W, 3]: alpha-blended onto white, or onto black when the opaque
  pixels are light (mean luminance > 127) so light text on a transparent background stays
  readable. A fully opaque image comes back unchanged."""
  alpha = rgba[:, :, 3:].astype(np.float32) / 255.0
  rgb = rgba[:, :, :3].astype(np.float32)
  if alpha.min() >= 1.0:
    return np.ascontiguousarray(rgba[:, :, :3])
  weight = float(alpha.sum())
  luma = rgb @ np.float32([0.299, 0.587, 0.114])
  light = weight > 0 and float((luma * alpha[:, :, 0]).sum()) / weight > 127.0
  background = 0.0 if light else 255.0
  out = rgb * alpha + background * (1.0 - alpha)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def is_plain(data: bytes) -> bool:
  """True when OpenCV's plain `imdecode(IMREAD_COLOR)` reads the bytes exactly as `decode`
  does: 8-bit grayscale / RGB PNG, JPEG or BMP without alpha (create_lmdb keeps those bytes)."""
  fmt, _ = _header(bytes(data))
  if fmt not in ("PNG", "JPEG", "BMP"):
    return False
  image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
  return (
    image is not None and image.dtype == np.uint8 and (image.ndim == 2 or image.shape[2] in (1, 3))
  )


def encode_png(image: np.ndarray) -> bytes:
  """uint8 [H, W, 3] RGB -> PNG bytes."""
  ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
  if not ok:
    raise ValueError(f"cannot PNG-encode an image of shape {image.shape}")
  return buf.tobytes()
