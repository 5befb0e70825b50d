"""CTC decoding with a word list: the greedy reading, or a nearby word when the image backs it.

A greedy CTC reading that is one or two characters off a known word ("recognitlon") is the
commonest error of a small recognizer on unseen fonts; Tesseract, the baseline users compare
with, corrects those with its dictionaries. This is the same idea kept honest to the image:

    candidates = lexicon words within `max_edits` (Levenshtein) of the greedy text (rapidfuzz)
    score(s)   = log P_ctc(s | image) + bonus * [s in lexicon]
    reading    = argmax over {greedy text} + candidates   (readings of 4+ characters)

`log P_ctc(s | image)` sums over all CTC alignments of `s` (the forward algorithm on the
frame log-probabilities `[T, C]`), so a word wins only when the frames support it; `bonus`
(nats) is the prior for being a word, chosen on validation lines (docs/recognition.md). Numbers
and codes are left alone unless a word explains the frames nearly as well. Pure numpy on the
host, after the model: ~0.3 ms per candidate for T = 33.

Lexicons (`load`): `wordfreq:LANG:N` (the N most frequent words of the `wordfreq` package's
list for LANG, e.g. `wordfreq:en:50000`) or a UTF-8 text file, one word per line. Words are
normalised by the model's charset (lowercase for caseless charsets; characters outside it
stripped, as `oov=strip` does for labels); for a cased charset each word also enters as
Capitalised and UPPER.
"""

import functools
import os

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from sslocr_jax import errors

_NEG = -1e30
# The log-prior of a lexicon word (nats): the best of 0, 2, 4, 6, 8, 12 on cpu60's validation
# lines (docs/recognition.md "Reading with a word list"), the value the published figures use.
DEFAULT_BONUS = 6.0
# Readings shorter than this are kept as read: most words within 2 edits of a 3-character
# reading are other short words, and codes like "k8j" are short. On cpu60's validation lines
# (width-192 run of 2026-12-05, bonus 6) lines of 1-3 characters went from 84.1% greedy to
# 77.2% with the word list when they could be corrected; kept: 84.1%, all lines 80.5 -> 81.4.
MIN_LENGTH = 4


def log_softmax(logits: np.ndarray) -> np.ndarray:
  """float [..., C] -> log-probabilities over the last axis (float64: the sums stay exact)."""
  x = np.asarray(logits, np.float64)
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def ctc_log_likelihood(log_probs: np.ndarray, ids, blank: int) -> float:
  """log P(ids | frames) summed over all CTC alignments.

  log_probs: float [T, C] per-frame log-probabilities; ids: label ids (no blanks). -inf when
  the label cannot fit in T frames.
  """
  ids = list(ids)
  t_len = log_probs.shape[0]
  if not ids:
    return float(log_probs[:, blank].sum())
  ext = [blank]
  for i in ids:
    ext += [i, blank]
  ext = np.asarray(ext)
  s = len(ext)
  # Skipping the blank between two labels is allowed unless they repeat.
  skip = np.zeros(s, bool)
  skip[2:] = (ext[2:] != blank) & (ext[2:] != ext[:-2])
  alpha = np.full(s, _NEG)
  alpha[0] = log_probs[0, blank]
  alpha[1] = log_probs[0, ext[1]]
  for t in range(1, t_len):
    prev1 = np.concatenate([[_NEG], alpha[:-1]])
    prev2 = np.where(skip, np.concatenate([[_NEG, _NEG], alpha[:-2]]), _NEG)
    alpha = np.logaddexp(np.logaddexp(alpha, prev1), prev2) + log_probs[t, ext]
  total = np.logaddexp(alpha[-1], alpha[-2])
  return float(total) if total > _NEG / 2 else float("-inf")


def greedy(log_probs: np.ndarray, blank: int, ignore=()) -> list[int]:
  """Best-path ids of `[T, C]`: argmax per frame, repeats merged, blanks (and `ignore`) dropped
  (as models/decoders.ctc_greedy)."""
  best = np.argmax(log_probs, axis=-1)
  out, prev = [], blank
  for b in best.tolist():
    if b != prev and b != blank and b not in ignore:
      out.append(b)
    prev = b
  return out


@functools.lru_cache(maxsize=8)
def _wordfreq_words(lang: str, n: int) -> tuple[str, ...]:
  import wordfreq  # pylint: disable=g-import-not-at-top

  return tuple(wordfreq.top_n_list(lang, n))


def load(spec: str) -> list[str]:
  """Words of a lexicon spec: `wordfreq:LANG:N` or a text file (one word per line)."""
  if spec.startswith("wordfreq:"):
    parts = spec.split(":")
    if len(parts) != 3 or not parts[2].isdigit() or int(parts[2]) < 1:
      raise errors.UserError(f"lexicon {spec!r}: expected wordfreq:LANG:N, e.g. wordfreq:en:50000")
    words = _wordfreq_words(parts[1], int(parts[2]))
    if not words:
      raise errors.UserError(f"lexicon {spec!r}: wordfreq has no word list for {parts[1]!r}")
    return list(words)
  if not os.path.isfile(spec):
    raise errors.UserError(f"lexicon {spec!r}: no such file (or use wordfreq:LANG:N)")
  try:
    with open(spec, encoding="utf-8") as f:
      words = [w.strip() for w in f]
  except UnicodeDecodeError as e:
    raise errors.UserError(
      f"lexicon {spec}: not UTF-8 text ({e.reason} at byte {e.start})"
    ) from None
  words = [w for w in words if w]
  if not words:
    raise errors.UserError(f"lexicon {spec}: no words")
  return words


class LexiconDecoder:
  """Frames' log-probabilities -> (text, log P_ctc(text)) with a word list (module docstring).

  Attributes:
    words: the normalised lexicon (each a string of the charset's characters).
  """

  def __init__(
    self,
    words,
    charset,
    bonus: float = DEFAULT_BONUS,
    max_edits: int = 2,
    candidates: int = 8,
    min_length: int = MIN_LENGTH,
  ):
    self.charset, self.bonus = charset, float(bonus)
    self.max_edits, self.candidates = int(max_edits), int(candidates)
    self.min_length = int(min_length)
    index = {c: i for i, c in enumerate(charset.chars)}
    seen, out = set(), []
    for w in words:
      forms = [w] if charset.lowercase else [w, w.capitalize(), w.upper()]
      for f in forms:
        f = charset.normalize(f) if charset.lowercase else f
        f = "".join(c for c in f if c in index)
        if f and f not in seen:
          seen.add(f)
          out.append(f)
    if not out:
      raise errors.UserError("the lexicon has no word in the model's charset")
    self.words = out
    self._set = seen
    self._keys = [w.lower() for w in out]
    self._index = index

  def score(self, log_probs: np.ndarray, text: str) -> float:
    """log P_ctc(text | frames) + the bonus if `text` is a lexicon word."""
    ids = [self._index[c] for c in text]
    return ctc_log_likelihood(log_probs, ids, self.charset.pad) + (
      self.bonus if text in self._set else 0.0
    )

  def decode(self, log_probs: np.ndarray) -> tuple[str, float]:
    """`[T, C]` log-probabilities (log_softmax of the CTC logits) -> (text, log P_ctc(text)).

    The greedy text is `Charset.decode` of the best path (as models/decoders.ctc_greedy: EOS
    frames count as blanks); a reading with an UNK, without letters or shorter than
    `min_length` is kept as it is."""
    cs = self.charset
    ids = greedy(log_probs, cs.pad, ignore=(cs.eos,))
    text = cs.decode(ids)
    logp = ctc_log_likelihood(log_probs, ids, cs.pad)
    if cs.unk in ids or len(text) < self.min_length or not any(c.isalpha() for c in text):
      return text, logp
    best, best_score = text, logp + (self.bonus if text in self._set else 0.0)
    hits = process.extract(
      text.lower(),
      self._keys,
      scorer=Levenshtein.distance,
      score_cutoff=self.max_edits,
      limit=self.candidates,
    )
    for _, _, k in hits:
      cand = self.words[k]
      if cand != best:
        s = self.score(log_probs, cand)
        if s > best_score:
          best, best_score = cand, s
    return best, best_score - (self.bonus if best in self._set else 0.0)
