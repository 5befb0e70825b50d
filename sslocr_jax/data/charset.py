"""Recognition charset (DiG convention): label str <-> int32 ids.

Index layout (as DiG / ASTER's `get_vocabulary`), for a charset of N characters:

    0 .. N-1   the characters, in charset order
    N          EOS
    N + 1      PAD
    N + 2      UNK
    N + 3      BOS (decoder input only; not a class)

The default charset is the 94 printable ASCII characters without whitespace
(`string.printable[:-6]`): 97 classes, BOS = 97.

`encode(label, max_len) -> int32 [max_len + 1]`: the ids, EOS, then PAD. Labels
are checked first (`check`): empty, longer than max_len, or with characters outside
the charset under the "drop" policy are rejected with a reason (one of `REASONS`)
that callers count and report by index; under the "unk" policy out-of-charset
characters become UNK.
"""

import re
import string

import numpy as np

PRINTABLE94 = string.printable[:-6]
NAMED = {
  "printable94": (PRINTABLE94, False),
  "lower36": (string.digits + string.ascii_lowercase, True),
}
OOV_POLICIES = ("drop", "unk", "strip")
REASONS = ("empty", "too_long", "out_of_charset")
UNK_STR = "\ufffd"  # what decode() writes for UNK

# Scoring modes (`eval_charset`), as parseq's and mmocr's: what is compared after filtering
# both prediction and label. lower36 is the standard 6-benchmark protocol.
EVAL_CHARSETS = {
  "lower36": "lowercase, keep only [0-9a-z]",
  "cased62": "case kept, keep only [0-9a-zA-Z]",
  "printable94": "case and punctuation kept: the 94 printable ASCII characters (no spaces)",
}
_METRIC_DROP = {
  "lower36": re.compile(r"[^0-9a-z]"),
  "cased62": re.compile(r"[^0-9a-zA-Z]"),
  "printable94": re.compile("[^" + re.escape(PRINTABLE94) + "]"),
}


def filter_label_for_metric(s, eval_charset="lower36"):
  """The STR evaluation filter of a scoring mode (EVAL_CHARSETS); by default the standard
  one: lowercase, keep only [0-9a-z]. Characters outside the mode's set are dropped, not
  mapped ("café" -> "caf"; parseq maps accents to ASCII first, strhub/data/dataset.py)."""
  if eval_charset not in _METRIC_DROP:
    raise ValueError(f"eval_charset={eval_charset!r}; valid: {', '.join(EVAL_CHARSETS)}")
  if eval_charset == "lower36":
    s = s.lower()
  return _METRIC_DROP[eval_charset].sub("", s)


class Charset:
  """Characters plus EOS, PAD, UNK (and BOS for decoder inputs).

  Attributes:
    chars: the N characters; ids 0..N-1.
    oov: "drop" (reject labels with unknown characters), "unk" (map them to UNK) or "strip"
      (remove them, as clovaai's deep-text-recognition-benchmark `dataset.py` LmdbDataset does
      with `re.sub(f"[^{character}]", "", label)`: with a caseless [0-9a-z] charset a line
      "Don't!" trains as "dont", the label the benchmarks score, instead of being dropped).
    lowercase: lowercase labels before lookup (for caseless charsets like lower36).
  """

  def __init__(self, chars=PRINTABLE94, oov="drop", lowercase=False):
    chars = list(chars)
    if not chars:
      raise ValueError("empty charset")
    if len(set(chars)) != len(chars):
      dup = sorted({c for c in chars if chars.count(c) > 1})
      raise ValueError(f"charset has duplicate characters: {dup!r}")
    if oov not in OOV_POLICIES:
      raise ValueError(f"oov={oov!r}, expected one of {OOV_POLICIES}")
    self.chars = "".join(chars)
    self.oov = oov
    self.lowercase = bool(lowercase)
    self._index = {c: i for i, c in enumerate(chars)}

  @classmethod
  def named(cls, name, oov="drop"):
    """`printable94` (DiG default, 97 classes) or `lower36` (caseless, 39)."""
    if name not in NAMED:
      raise ValueError(f"unknown charset {name!r}; valid: {sorted(NAMED)}")
    chars, lower = NAMED[name]
    return cls(chars, oov=oov, lowercase=lower)

  @classmethod
  def from_file(cls, path, oov="drop", lowercase=False):
    """One character per line (UTF-8; a line holding one space is the space)."""
    chars = []
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        c = line.rstrip("\r\n")
        if not c:
          continue
        if len(c) != 1:
          raise ValueError(f"{path}:{n}: expected one character, got {c!r}")
        chars.append(c)
    if not chars:
      raise ValueError(f"charset file {path} has no characters")
    return cls(chars, oov=oov, lowercase=lowercase)

  # Special ids.
  @property
  def num_chars(self):
    return len(self.chars)

  @property
  def eos(self):
    return self.num_chars

  @property
  def pad(self):
    return self.num_chars + 1

  @property
  def unk(self):
    return self.num_chars + 2

  @property
  def bos(self):
    return self.num_chars + 3

  @property
  def num_classes(self):
    """Classifier outputs: chars + EOS + PAD + UNK (97 for the default)."""
    return self.num_chars + 3

  def __len__(self):
    return self.num_classes

  def normalize(self, label):
    label = label.lower() if self.lowercase else label
    if self.oov == "strip":
      label = "".join(c for c in label if c in self._index)
    return label

  def check(self, label, max_len):
    """None if `label` can be encoded, else the reason (one of REASONS)."""
    label = self.normalize(label)
    if not label:
      return "empty"
    if len(label) > max_len:
      return "too_long"
    if self.oov == "drop" and any(c not in self._index for c in label):
      return "out_of_charset"
    return None

  def encode(self, label, max_len):
    """label -> int32 [max_len + 1]: ids, EOS, PAD...; ValueError if rejected."""
    reason = self.check(label, max_len)
    if reason is not None:
      raise ValueError(f"cannot encode label {label!r}: {reason}")
    label = self.normalize(label)
    out = np.full((max_len + 1,), self.pad, np.int32)
    unk = self.unk
    out[: len(label)] = [self._index.get(c, unk) for c in label]
    out[len(label)] = self.eos
    return out

  def encode_batch(self, labels, max_len):
    """labels -> (ids int32 [N, max_len + 1], keep bool [N], reasons [N] str|None).

    Rejected labels get an all-PAD row and keep=False; their reason says why.
    """
    ids = np.full((len(labels), max_len + 1), self.pad, np.int32)
    keep = np.zeros((len(labels),), bool)
    reasons = []
    for i, label in enumerate(labels):
      reason = self.check(label, max_len)
      reasons.append(reason)
      if reason is None:
        ids[i] = self.encode(label, max_len)
        keep[i] = True
    return ids, keep, reasons

  def decode(self, ids):
    """ids (any int sequence) -> str, stopping at the first EOS; PAD/BOS skipped."""
    out = []
    n = self.num_chars
    for i in np.asarray(ids).reshape(-1).tolist():
      if i == self.eos:
        break
      if 0 <= i < n:
        out.append(self.chars[i])
      elif i == self.unk:
        out.append(UNK_STR)
    return "".join(out)
