"""Built-in synthetic text-line renderer, deterministic by `(seed, index)`.

    r = Renderer(seed=0, height=32)
    image, label = r.render(7)   # uint8 [32, W, 3] RGB, W natural (or `width`)

How a sample is made (all choices drawn from `random.Random` seeded by
`(seed, index)`, so any process renders the same sample for the same index):

1. text: a word of the English frequency list (`wordfreq`, top 20k, random case,
   optional punctuation) or a random string (numbers, prices, times, mixed case,
   any printable character); 1..`max_len` characters of the 94 printable ASCII
   characters without whitespace (`string.printable[:-6]`).
2. font: a face of the chosen split (`FONT_SPLITS`) at one of 3 sizes; characters
   the face has no glyph for (cmap) are dropped, so the label is exactly what is
   drawn.
3. glyphs: a per-(face, size) cache of glyph masks (rasterised once by FreeType via
   PIL) is pasted into a mask with random letter spacing; no per-sample font work.
4. geometry: one warp of the 1-channel mask to the output size (`cv2.warpAffine`,
   or `cv2.remap` when curved) does the scale, a slight rotation and a sinusoidal
   curvature, with random margins; optional blur.
5. colour: plain / gradient / smooth-blotch backgrounds, optional noise (from a
   per-renderer noise bank), text colour with a minimum luminance contrast; all
   compositing in uint8 OpenCV ops (numpy broadcasting over 3 channels is ~5x
   slower at these sizes).

Fonts (64 "train" faces, 21 "heldout" faces), plus fonts from `font_dirs`:
  train    matplotlib's DejaVu Sans / Sans Mono / Serif; `pymupdf_fonts`' Cascadia Mono, FiraGO,
           Fira Mono, Noto Sans; the font packages of `_PYPKG_FACES` (`font-source-serif-pro`,
           `font-source-sans-pro`, `font-roboto`, `font-caladea`, `font-lato`,
           `font-hanken-grotesk`, `font-rhd`, `font-manrope`, `font-fjallaone`,
           `font-fredoka-one`: light to black weights, with italics).
  heldout  `HELDOUT_FAMILIES`: matplotlib's STIX and Computer Modern; `pymupdf_fonts`' Space
           Mono, Ubuntu, Ubuntu Mono. Never used by the "train" split, so a held-out set is
           rendered with unseen fonts.

Speed: 7,700-8,300 renders/s on one core (`taskset -c 0 python -m
sslocr_jax.data.render --n 5000`, glyph caches warm, 2-core shared x86 dev VM,
height 32); ~2,700 samples/s with DiG's `make_views` added. The 20 font-package faces
(2026-12-04) cost ~4% of that (renders per CPU-second with warm caches, 46 vs 26 train faces,
3 interleaved rounds of 5,000 under `nice -n 19` on the loaded VM: median 9,160 vs 9,460) and
~0.3 CPU-s more glyph rasterising per process, once (`warm()`: 0.95 vs 0.68 s).
"""

import dataclasses
import functools
import glob
import importlib.util
import io
import math
import os
import random
import string
import zlib

import cv2
import numpy as np
from PIL import Image, ImageFont

CHARS = string.printable[:-6]  # the 94 printable ASCII characters, no whitespace.
_CHARSET = frozenset(CHARS)
_DIGITS = string.digits
_ALNUM = string.ascii_letters + string.digits
_PUNCT_END = ".,!?:;'\")"

# Families never drawn by the "train" split (everything else is "train"). Besides a Times-like
# serif (STIX), a humanist sans (Ubuntu) and two monospaced faces, the Computer Modern faces
# (high-contrast Didone serif, its italic and bold, a sans and a typewriter) are styles the
# training faces (DejaVu, Cascadia, Fira, Noto, Source Serif / Sans, Roboto) do not cover, so the
# held-out figure is read on fonts far from the training ones, not on near-twins of them.
HELDOUT_FAMILIES = (
  "STIXGeneral",
  "SpaceMono",
  "Ubuntu",
  "UbuntuMono",
  "CMRoman",
  "CMSans",
  "CMTypewriter",
)
FONT_SPLITS = ("train", "heldout", "all")

_MPL_FACES = {  # family -> files in matplotlib's mpl-data/fonts/ttf.
  "DejaVuSans": (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
  ),
  "DejaVuSansMono": (
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
  ),
  "DejaVuSerif": (
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
  ),
  "STIXGeneral": (
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
  ),
  "CMRoman": ("cmr10.ttf", "cmb10.ttf", "cmti10.ttf"),
  "CMSans": ("cmss10.ttf",),
  "CMTypewriter": ("cmtt10.ttf",),
}
# matplotlib's Computer Modern (BaKoMa) faces map a few ASCII codes to their TeX (OT1) glyphs
# (e.g. "<" draws an inverted "!"): those characters are treated as absent from the face.
_WRONG_GLYPHS = {f: '<>{}|_\\"^~`' for f in ("cmr10.ttf", "cmb10.ttf", "cmti10.ttf", "cmss10.ttf")}
_WRONG_GLYPHS["cmti10.ttf"] += "$"  # a pound sign in the italic
_PYMUPDF_FACES = {  # family -> keys of `pymupdf_fonts.myfont`.
  "CascadiaMono": ("cascadia", "cascadiab", "cascadiai", "cascadiabi"),
  "FiraGO": ("figo", "figbo", "figit", "figbi"),
  "FiraMono": ("fimo", "fimbo"),
  "NotoSans": ("notos", "notosbo", "notosit", "notosbi"),
  "SpaceMono": ("spacemo", "spacembo", "spacemit", "spacembi"),
  "Ubuntu": ("ubuntu", "ubuntubo", "ubuntuit", "ubuntubi"),
  "UbuntuMono": ("ubuntm", "ubuntmbo", "ubuntmit", "ubuntmbi"),
}
# family -> (module of a font package on PyPI, files in its `files/` folder). All train
# families: they widen the training styles (Source Serif Pro is the only serif with several
# weights and italics among them, as the held-out set has STIX and Computer Modern). Weights
# lighter than Light (ExtraLight, Thin) are left out: their hairline strokes fade into the
# background once blurred at 32 px. The .ttf files, where a package also ships .otf.
# Amatic SC (`font-amatic-sc`) is in neither split: a small-caps face draws "a" like "A", so its
# lines would carry lowercase labels over capitals.
_PYPKG_FACES = {
  "SourceSerifPro": (
    "font_source_serif_pro",
    (
      "SourceSerifPro-Regular.ttf",
      "SourceSerifPro-It.ttf",
      "SourceSerifPro-Light.ttf",
      "SourceSerifPro-LightIt.ttf",
      "SourceSerifPro-Semibold.ttf",
      "SourceSerifPro-SemiboldIt.ttf",
      "SourceSerifPro-Bold.ttf",
      "SourceSerifPro-BoldIt.ttf",
    ),
  ),
  "SourceSansPro": (
    "font_source_sans_pro",
    (
      "SourceSansPro-Regular.ttf",
      "SourceSansPro-It.ttf",
      "SourceSansPro-Light.ttf",
      "SourceSansPro-Semibold.ttf",
      "SourceSansPro-Bold.ttf",
      "SourceSansPro-BoldIt.ttf",
    ),
  ),
  "Roboto": (
    "font_roboto",
    (
      "Roboto-Regular.ttf",
      "Roboto-Italic.ttf",
      "Roboto-Light.ttf",
      "Roboto-Bold.ttf",
      "Roboto-BoldItalic.ttf",
      "Roboto-Black.ttf",
    ),
  ),
  # 2026-12-05: the held-out lines were lost mostly in serifs (STIX, Computer Modern) and Space
  # Mono (per-family word accuracy of the cpu60 model, docs/recognition.md "Seventh run"), so
  # more families: a second serif with italics (Caladea), geometric and humanist sans (Lato,
  # Hanken Grotesk, Red Hat Display, Manrope), a condensed and a rounded display face (Fjalla
  # One, Fredoka One). A few weights each, so that serifs keep a quarter of the faces.
  "Caladea": (
    "font_caladea",
    ("Caladea-Regular.ttf", "Caladea-Italic.ttf", "Caladea-Bold.ttf", "Caladea-BoldItalic.ttf"),
  ),
  "Lato": (
    "font_lato",
    ("Lato-Regular.ttf", "Lato-Italic.ttf", "Lato-Bold.ttf", "Lato-Black.ttf"),
  ),
  "HankenGrotesk": (
    "font_hanken_grotesk",
    ("HankenGrotesk-Regular.otf", "HankenGrotesk-Italic.otf", "HankenGrotesk-Bold.otf"),
  ),
  "RedHatDisplay": (
    "font_rhd",
    ("RedHatDisplay-Regular.ttf", "RedHatDisplay-Italic.ttf", "RedHatDisplay-Bold.ttf"),
  ),
  "Manrope": ("font_manrope", ("Manrope-Regular.ttf", "Manrope-Bold.ttf")),
  "FjallaOne": ("font_fjallaone", ("FjallaOne-Regular.ttf",)),
  "FredokaOne": ("font_fredoka_one", ("FredokaOne-Regular.ttf",)),
}
_FONT_EXTS = (".ttf", ".otf", ".ttc", ".TTF", ".OTF", ".TTC")


@dataclasses.dataclass(frozen=True)
class Face:
  """One font face: `kind` in {"mpl", "pymupdf", "pypkg", "file"}; `ref` the mpl file, the
  pymupdf key, "module/file" of a font package, or the file's path."""

  name: str
  family: str
  kind: str
  ref: str
  heldout: bool = False


def builtin_faces():
  """All built-in faces, in a fixed order (train and held-out families)."""
  faces = []
  for fam, files in _MPL_FACES.items():
    faces += [Face(f[:-4], fam, "mpl", f, fam in HELDOUT_FAMILIES) for f in files]
  for fam, keys in _PYMUPDF_FACES.items():
    faces += [Face(k, fam, "pymupdf", k, fam in HELDOUT_FAMILIES) for k in keys]
  # Appended last: the faces above keep their order, and the held-out split is unchanged.
  for fam, (module, files) in _PYPKG_FACES.items():
    faces += [Face(f[:-4], fam, "pypkg", f"{module}/{f}", fam in HELDOUT_FAMILIES) for f in files]
  return faces


def _font_package_dir(module):
  """Folder of the font package `module`; ModuleNotFoundError naming its pip package if absent.

  Skipping its faces instead would silently change which face every train sample draws.
  """
  spec = importlib.util.find_spec(module)
  if spec is None:
    dist = module.replace("_", "-")
    raise ModuleNotFoundError(
      f"the built-in 'train' fonts need {dist!r} (pip install {dist}); without it every "
      "sample's face would differ",
      name=module,
    )
  return spec.submodule_search_locations[0]


def _file_face(path):
  """A face of a user font file; its family (file name up to the first "-" or
  "_") is held out iff crc32(family) % 4 == 0, stable across runs and machines."""
  stem = os.path.splitext(os.path.basename(path))[0]
  family = stem.split("-")[0].split("_")[0]
  heldout = zlib.crc32(family.encode()) % 4 == 0
  return Face(stem, family, "file", os.path.abspath(path), heldout)


def faces_for_split(split, fonts=None, font_dirs=()):
  """The faces a Renderer draws from.

  Args:
    split: "train" (all but held-out families), "heldout" or "all".
    fonts: explicit font file paths; if given, exactly these are used (no split).
    font_dirs: folders whose font files (.ttf/.otf/.ttc, recursive) are added to
      the built-in pool, split by family (see `_file_face`).
  """
  if split not in FONT_SPLITS:
    raise ValueError(f"font_split={split!r}, expected one of {FONT_SPLITS}")
  if fonts:
    return [dataclasses.replace(_file_face(p), heldout=False) for p in fonts]
  faces = builtin_faces()
  for d in font_dirs:
    if not os.path.isdir(d):
      raise FileNotFoundError(f"font dir {d!r} does not exist")
    paths = sorted(
      p for p in glob.glob(os.path.join(d, "**", "*"), recursive=True) if p.endswith(_FONT_EXTS)
    )
    faces += [_file_face(p) for p in paths]

  if split == "train":
    faces = [f for f in faces if not f.heldout]
  elif split == "heldout":
    faces = [f for f in faces if f.heldout]
  if not faces:
    raise ValueError(f"no fonts for split {split!r}")
  for module in sorted({f.ref.split("/")[0] for f in faces if f.kind == "pypkg"}):
    _font_package_dir(module)  # a missing package fails here, not at some later sample.
  return faces


def _face_bytes(face):
  """Raw font file bytes of `face`; ValueError naming the file if unreadable."""
  if face.kind == "pymupdf":
    import pymupdf_fonts  # pylint: disable=g-import-not-at-top

    return pymupdf_fonts.myfont(face.ref)
  path = face.ref
  if face.kind == "mpl":
    import matplotlib  # pylint: disable=g-import-not-at-top

    path = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf", face.ref)
  elif face.kind == "pypkg":
    module, file = face.ref.split("/")
    path = os.path.join(_font_package_dir(module), "files", file)
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise ValueError(f"cannot read font file {path!r}: {e}") from e


def _supported_chars(face, data):
  """Characters of CHARS that `face` maps to a glyph (its cmap)."""
  from fontTools.ttLib import TTFont  # pylint: disable=g-import-not-at-top

  try:
    tt = TTFont(io.BytesIO(data), lazy=True, fontNumber=0)
    cmap = tt.getBestCmap() or {}
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"cannot read font file {face.ref!r}: {e}") from e
  wrong = _WRONG_GLYPHS.get(face.ref, "") if face.kind == "mpl" else ""
  return frozenset(c for c in CHARS if ord(c) in cmap and c not in wrong)


class _Glyphs:
  """Glyph masks of one (face, size): `get(ch) -> (mask [h, w] uint8, dx, dy, adv)`."""

  def __init__(self, face, data, size):
    try:
      self.font = ImageFont.truetype(io.BytesIO(data), size, layout_engine=ImageFont.Layout.BASIC)
    except OSError as e:
      raise ValueError(f"cannot read font file {face.ref!r}: {e}") from e
    self.ascent, self.descent = self.font.getmetrics()
    self.cache = {}

  def get(self, ch):
    g = self.cache.get(ch)
    if g is None:
      core, (dx, dy) = self.font.getmask2(ch, mode="L")
      mask = np.asarray(Image.Image()._new(core))  # pylint: disable=protected-access
      g = (mask, dx, dy, self.font.getlength(ch))
      self.cache[ch] = g
    return g


@functools.lru_cache(maxsize=None)
def _wordlist():
  import wordfreq  # pylint: disable=g-import-not-at-top

  words = wordfreq.top_n_list("en", 20000)
  return tuple(w for w in words if w and set(w) <= _CHARSET)


class Renderer:
  """Synthetic text lines: `render(index) -> (uint8 [height, W, 3] RGB, label)`.

  Attributes:
    seed: together with the index, fixes every random choice of a sample.
    height: output height in pixels; glyphs are rasterised at 0.75-1.05 x height
      and the line with its margins is resampled once to it.
    width: output width; None keeps the natural aspect ratio of the text line.
    fonts / font_dirs / font_split: see `faces_for_split`.
    max_len: longest label (characters).
    word_prob: share of dictionary words (the rest are random strings).
  """

  NOISE_BANK = (96, 1024)  # [h, w] of the per-renderer Gaussian noise bank.

  def __init__(
    self,
    seed=0,
    height=32,
    width=None,
    fonts=None,
    font_dirs=(),
    font_split="train",
    max_len=25,
    word_prob=0.6,
  ):
    if max_len < 1:
      raise ValueError(f"max_len={max_len} must be >= 1")
    self.seed = int(seed)
    self.height = int(height)
    self.width = None if width is None else int(width)
    self.max_len = int(max_len)
    self.word_prob = float(word_prob)
    self.font_split = font_split
    self.faces = faces_for_split(font_split, fonts, tuple(font_dirs))
    self.sizes = tuple(sorted({max(8, round(self.height * f)) for f in (0.75, 0.9, 1.05)}))
    self._init_caches()
    for i, f in enumerate(self.faces):  # Fail early on unreadable user fonts.
      if f.kind == "file":
        self._glyph_set(i, self.sizes[0])

  def _init_caches(self):
    self._data = {}  # face index -> (bytes, supported chars)
    self._glyphs = {}  # (face index, size) -> _Glyphs
    self._noise = None  # float32 [*NOISE_BANK, 3]

  def __getstate__(self):  # Caches hold FreeType objects: rebuild per process.
    state = self.__dict__.copy()
    for k in ("_data", "_glyphs", "_noise"):
      state.pop(k)
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._init_caches()

  def _face_data(self, i):
    d = self._data.get(i)
    if d is None:
      data = _face_bytes(self.faces[i])
      d = self._data[i] = (data, _supported_chars(self.faces[i], data))
    return d

  def _glyph_set(self, i, size):
    g = self._glyphs.get((i, size))
    if g is None:
      g = self._glyphs[(i, size)] = _Glyphs(self.faces[i], self._face_data(i)[0], size)
    return g

  def _noise_bank(self):
    if self._noise is None:
      rng = np.random.default_rng(self.seed)
      self._noise = rng.standard_normal(self.NOISE_BANK + (3,), np.float32)
    return self._noise

  # --- text ---------------------------------------------------------------

  def _random_string(self, r):
    kind = r.random()
    if kind < 0.3:  # numbers, prices, times, dates, codes
      n = r.choice((1, 2, 2, 3, 4, 4, 5, 6, 8, 10))
      s = "".join(r.choice(_DIGITS) for _ in range(n))
      fmt = r.random()
      if fmt < 0.15 and n >= 2:
        s = f"{s[:-2]}.{s[-2:]}" if n > 2 else f"{s[0]}.{s[1]}"
        s = r.choice(("$", "", "", "#")) + s
      elif fmt < 0.25 and n >= 3:
        s = f"{s[:-2]}:{s[-2:]}"
      elif fmt < 0.32 and n >= 4:
        sep = r.choice("/-.")
        s = sep.join((s[:2], s[2:4], s[4:])) if n > 4 else f"{s[:2]}{sep}{s[2:]}"
      elif fmt < 0.4:
        s += r.choice(("%", "kg", "km", "th", "s", "am", "pm", "+"))
      return s
    n = min(self.max_len, int(r.triangular(1, 16, 5)))
    if kind < 0.75:  # alphanumeric, mixed case
      pool = r.choice(
        (_ALNUM, string.ascii_uppercase + _DIGITS, string.ascii_lowercase, string.ascii_uppercase)
      )
    else:  # any printable character
      pool = CHARS
    return "".join(r.choice(pool) for _ in range(n))

  def _word(self, r):
    words = _wordlist()
    w = words[r.randrange(len(words))]
    c = r.random()
    if c < 0.3:
      w = w.capitalize()
    elif c < 0.5:
      w = w.upper()
    p = r.random()
    if p < 0.05:  # compound
      w += r.choice("-/._'") + words[r.randrange(len(words))]
    elif p < 0.15:
      w += r.choice(_PUNCT_END)
    elif p < 0.18:
      q = r.choice(('""', "()", "''", "[]"))
      w = q[0] + w + q[1]
    return w

  def _text(self, r):
    s = self._word(r) if r.random() < self.word_prob else self._random_string(r)
    return s[: self.max_len]

  # --- drawing --------------------------------------------------------------

  def _draw_mask(self, r, glyphs, text):
    """Pastes cached glyphs: uint8 [hs, ws] mask of the text's line or ink box."""
    size = glyphs.font.size
    spacing = 0.0 if r.random() < 0.7 else r.uniform(-0.04, 0.25) * size
    pen, placed = 0.0, []
    x0 = y0 = 1 << 30
    x1 = y1 = -(1 << 30)
    for ch in text:
      mask, dx, dy, adv = glyphs.get(ch)
      x = int(round(pen)) + dx
      pen += adv + spacing
      h, w = mask.shape
      if h and w:
        placed.append((mask, x, dy))
        x0, x1 = min(x0, x), max(x1, x + w)
        y0, y1 = min(y0, dy), max(y1, dy + h)
    if not placed:  # only empty glyphs: a blank line box.
      return np.zeros((glyphs.ascent + glyphs.descent, max(1, int(pen))), np.uint8)
    if r.random() < 0.6:  # typographic line box (ascender..descender), else ink box
      y0, y1 = min(y0, 0), max(y1, glyphs.ascent + glyphs.descent)
    canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
    for m, x, y in placed:
      sub = canvas[y - y0 : y - y0 + m.shape[0], x - x0 : x - x0 + m.shape[1]]
      np.maximum(sub, m, out=sub)
    return canvas

  def _warp(self, r, mask):
    """Margins, scale, rotation, curvature: uint8 mask -> alpha uint8 [H, W]."""
    hs, ws = mask.shape
    angle = math.radians(r.gauss(0, 1.5)) if r.random() < 0.5 else 0.0
    amp = r.uniform(0.03, 0.12) * hs if r.random() < 0.2 else 0.0
    c, s = math.cos(angle), math.sin(angle)
    wd = ws * c + (hs + 2 * amp) * abs(s)
    hd = (hs + 2 * amp) * c + ws * abs(s)
    ml, mr = r.uniform(0, 0.35) * hs, r.uniform(0, 0.35) * hs
    mt, mb = r.uniform(0, 0.25) * hs, r.uniform(0, 0.25) * hs
    w_pad, h_pad = wd + ml + mr, hd + mt + mb
    out_h = self.height
    sy = out_h / h_pad
    out_w = self.width or max(1, int(round(w_pad * sy)))
    sx = out_w / w_pad
    # Inverse map, output pixel (u, v) -> distorted frame (rx, ry) -> source:
    #   rx = (u + .5) / sx - (ml + wd / 2),  ry = (v + .5) / sy - (mt + hd / 2)
    #   x = c rx + s ry + ws / 2 - .5,  y = c ry - s rx + hs / 2 - .5 - curve(x)
    bx, by = 0.5 / sx - ml - wd / 2, 0.5 / sy - mt - hd / 2
    if not amp:
      m = np.array(
        [
          [c / sx, s / sy, c * bx + s * by + ws / 2 - 0.5],
          [-s / sx, c / sy, c * by - s * bx + hs / 2 - 0.5],
        ],
        np.float32,
      )
      alpha = cv2.warpAffine(
        mask,
        m,
        (out_w, out_h),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
      )
    else:
      rx = np.arange(out_w, dtype=np.float32) / sx + bx
      ry = np.arange(out_h, dtype=np.float32)[:, None] / sy + by
      map_x = c * rx + (s * ry + (ws / 2 - 0.5))
      map_y = (c * ry + (hs / 2 - 0.5)) - s * rx
      period = r.uniform(1.0, 3.0) * max(ws, hs)
      phase = r.uniform(0, 2 * math.pi)
      map_y -= amp * np.sin(map_x * (2 * math.pi / period) + phase)
      alpha = cv2.remap(
        mask, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
      )
    if r.random() < 0.25:
      k = 3 if r.random() < 0.8 else 5
      alpha = cv2.GaussianBlur(alpha, (k, k), 0)
    return alpha

  def _colours(self, r):
    """(background rgb, second background rgb, text rgb), ints in [0, 255]."""
    lb = r.uniform(0, 255)
    contrast = r.uniform(100, 230)
    if lb + contrast <= 255 and (lb - contrast < 0 or r.random() < 0.5):
      lf = lb + contrast
    elif lb - contrast >= 0:
      lf = lb - contrast
    else:  # cannot reach the contrast on either side: use the far end.
      lf = 255.0 if lb < 128 else 0.0
    sat_b, sat_f = r.uniform(0, 45), r.uniform(0, 45)
    bg = [lb + r.uniform(-sat_b, sat_b) for _ in range(3)]
    bg2 = [v + r.uniform(-40, 40) * (contrast / 230) for v in bg]
    fg = [lf + r.uniform(-sat_f, sat_f) for _ in range(3)]
    clip = lambda c: tuple(min(255, max(0, int(v + 0.5))) for v in c)
    return clip(bg), clip(bg2), clip(fg)

  def _background(self, r, h, w, bg, bg2):
    """uint8 [h, w, 3]: plain, gradient (x or y), or smooth blotches; + noise."""
    kind = r.random()
    if kind < 0.35:  # plain
      img = cv2.copyMakeBorder(np.array([[bg]], np.uint8), 0, h - 1, 0, w - 1, cv2.BORDER_REPLICATE)
    elif kind < 0.65:  # linear gradient along x or y
      ends = np.array([[bg, bg2]], np.uint8)
      if r.random() < 0.5:
        row = cv2.resize(ends, (w, 1), interpolation=cv2.INTER_LINEAR)
        img = cv2.copyMakeBorder(row, 0, h - 1, 0, 0, cv2.BORDER_REPLICATE)
      else:
        col = cv2.resize(ends.transpose(1, 0, 2), (1, h), interpolation=cv2.INTER_LINEAR)
        img = cv2.copyMakeBorder(col, 0, 0, 0, w - 1, cv2.BORDER_REPLICATE)
    else:  # smooth blotches: a tiny random field upsampled
      gh, gw = r.randint(2, 3), r.randint(2, 6)
      bank = self._noise_bank()
      x = r.randrange(bank.shape[1] - gw)
      field = bank[:gh, x : x + gw] * r.uniform(8, 30) + np.asarray(bg, np.float32)
      img = cv2.resize(
        np.clip(field, 0, 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR
      )
    if r.random() < 0.35:  # sensor-like noise
      img = cv2.addWeighted(
        img, 1.0, self._noise_crop(r, h, w), r.uniform(2, 14), 0.0, dtype=cv2.CV_8U
      )
    return img

  def _noise_crop(self, r, h, w):
    """float32 [h, w, 3] standard normal noise, a crop of the noise bank."""
    bank = self._noise_bank()
    bh, bw = bank.shape[:2]
    if h > bh or w > bw:
      return np.random.default_rng(r.getrandbits(32)).standard_normal((h, w, 3), np.float32)
    y, x = r.randrange(bh - h + 1), r.randrange(bw - w + 1)
    return bank[y : y + h, x : x + w]

  def warm(self):
    """Loads every face and rasterises all its glyphs at every size (~1-2 s)."""
    for i in range(len(self.faces)):
      supported = self._face_data(i)[1]
      for size in self.sizes:
        g = self._glyph_set(i, size)
        for ch in supported:
          g.get(ch)

  def sample_text(self, index):
    """(face index, size, label) of sample `index`: the text part of render()."""
    r = self._rng(index)
    return self._pick(r)

  def _rng(self, index):
    return random.Random((self.seed << 40) ^ int(index) ^ 0x5EED)

  def _pick(self, r):
    for _ in range(20):
      text = self._text(r)
      fi = r.randrange(len(self.faces))
      supported = self._face_data(fi)[1]
      text = "".join(ch for ch in text if ch in supported)
      if text:
        return fi, self.sizes[r.randrange(len(self.sizes))], text
    raise ValueError(f"no renderable text after 20 tries (fonts {self.faces})")

  def render(self, index):
    """Sample `index` -> (uint8 [height, W, 3] RGB, label str)."""
    r = self._rng(index)
    fi, size, label = self._pick(r)
    mask = self._draw_mask(r, self._glyph_set(fi, size), label)
    alpha = self._warp(r, mask)
    h, w = alpha.shape
    bg, bg2, fg = self._colours(r)
    img = self._background(r, h, w, bg, bg2)
    # out = img * (1 - a) + fg * a, in uint8 with OpenCV (numpy is ~5x slower here).
    a3 = cv2.cvtColor(alpha, cv2.COLOR_GRAY2RGB)
    text = cv2.multiply(a3, fg + (0,), scale=1 / 255)
    return cv2.add(text, cv2.multiply(img, 255 - a3, scale=1 / 255)), label


def benchmark(n=3000, **kw):
  """Renders/s of `Renderer(**kw)` over n indices after a warm-up pass."""
  import time  # pylint: disable=g-import-not-at-top

  rend = Renderer(**kw)
  rend.warm()  # a long run has every glyph cached.
  t = time.perf_counter()
  for i in range(n):
    rend.render(i)
  return n / (time.perf_counter() - t)


if __name__ == "__main__":
  import argparse  # pylint: disable=g-import-not-at-top

  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--n", type=int, default=3000)
  ap.add_argument("--height", type=int, default=32)
  ap.add_argument("--width", type=int, default=0)
  ap.add_argument("--split", default="train")
  args = ap.parse_args()
  rate = benchmark(args.n, height=args.height, width=args.width or None, font_split=args.split)
  print(f"{rate:.0f} renders/s")
