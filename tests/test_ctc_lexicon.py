"""models/ctc_lexicon.py: the CTC forward score against optax, and the word-list decoding."""

import numpy as np
import optax
import pytest
from sslocr_jax import errors
from sslocr_jax.data import charset as charset_lib
from sslocr_jax.models import ctc_lexicon


def _frames(cs, path: str, t: int = 12, sure: float = 6.0, seed: int = 0):
  """Log-probabilities [t, C] whose best path spells `path` ('_' = blank), plus noise."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(0, 0.5, (t, cs.num_classes))
  ids = [cs.pad if c == "_" else cs.chars.index(c) for c in path.ljust(t, "_")]
  logits[np.arange(t), ids] += sure
  return ctc_lexicon.log_softmax(logits)


def test_log_likelihood_equals_optax_ctc_loss():
  rng = np.random.default_rng(1)
  t, c, blank = 10, 7, 6
  logits = rng.normal(0, 1.5, (3, t, c)).astype(np.float32)
  labels = [[1, 2, 2], [0], [3, 1, 4, 5]]
  padded = np.zeros((3, 4), np.int32)
  paddings = np.ones((3, 4), np.float32)
  for i, ids in enumerate(labels):
    padded[i, : len(ids)], paddings[i, : len(ids)] = ids, 0.0
  want = -np.asarray(
    optax.ctc_loss(logits, np.zeros((3, t), np.float32), padded, paddings, blank_id=blank)
  )
  lp = ctc_lexicon.log_softmax(logits)
  got = [ctc_lexicon.ctc_log_likelihood(lp[i], ids, blank) for i, ids in enumerate(labels)]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  # A label that needs more frames than there are (2 x 'a' needs a blank between): -inf.
  assert ctc_lexicon.ctc_log_likelihood(lp[0][:1], [1, 1], blank) == float("-inf")


def test_greedy_merges_repeats_and_drops_blanks():
  cs = charset_lib.Charset.named("lower36")
  lp = _frames(cs, "hh_e_ll_l_oo")
  assert "".join(cs.chars[i] for i in ctc_lexicon.greedy(lp, cs.pad)) == "hello"


def test_decoder_corrects_a_near_word_and_leaves_strong_readings():
  cs = charset_lib.Charset.named("lower36")
  dec = ctc_lexicon.LexiconDecoder(["hello", "world", "help"], cs, bonus=4.0)
  # "hellc": the last frame is unsure between c and o -> the word wins.
  lp = _frames(cs, "h_e_l_l_c___")
  lp_o = lp.copy()
  o, c = cs.chars.index("o"), cs.chars.index("c")
  lp_o[8, o] = lp_o[8, c] - 0.5  # o nearly as likely as c on that frame
  lp_o = ctc_lexicon.log_softmax(lp_o)
  assert ctc_lexicon.greedy(lp_o, cs.pad) == [cs.chars.index(x) for x in "hellc"]
  text, logp = dec.decode(lp_o)
  assert text == "hello"
  want = ctc_lexicon.ctc_log_likelihood(lp_o, [cs.chars.index(x) for x in "hello"], cs.pad)
  assert logp == pytest.approx(want)
  # A confident reading that is no word (a code) stays as read, even 1 edit from a word.
  assert dec.decode(_frames(cs, "h_e_l_p_s___", sure=12.0))[0] == "helps"
  # Without the bonus nothing is corrected.
  assert ctc_lexicon.LexiconDecoder(["hello"], cs, bonus=0.0).decode(lp_o)[0] == "hellc"
  # Numbers are never looked up.
  assert dec.decode(_frames(cs, "1_2_3_______"))[0] == "123"


def test_short_readings_are_kept_as_read():
  """A reading under `min_length` characters is never replaced, however weak its frames;
  with min_length lowered the same frames are corrected to the word."""
  cs = charset_lib.Charset.named("lower36")
  lp = _frames(cs, "t_h_c_______")
  e, c = cs.chars.index("e"), cs.chars.index("c")
  lp[4, e] = lp[4, c] - 0.5  # e nearly as likely as c
  lp = ctc_lexicon.log_softmax(lp)
  assert ctc_lexicon.MIN_LENGTH == 4
  assert ctc_lexicon.LexiconDecoder(["the"], cs, bonus=6.0).decode(lp)[0] == "thc"
  assert ctc_lexicon.LexiconDecoder(["the"], cs, bonus=6.0, min_length=3).decode(lp)[0] == "the"


def test_words_are_normalised_to_the_charset():
  dec = ctc_lexicon.LexiconDecoder(["Don't", "OK", "ÿ"], charset_lib.Charset.named("lower36"))
  assert dec.words == ["dont", "ok"]
  cased = ctc_lexicon.LexiconDecoder(["word"], charset_lib.Charset.named("printable94"))
  assert cased.words == ["word", "Word", "WORD"]


def test_load_specs_and_errors(tmp_path):
  path = tmp_path / "words.txt"
  path.write_text("alpha\n\nbeta \n", encoding="utf-8")
  assert ctc_lexicon.load(str(path)) == ["alpha", "beta"]
  words = ctc_lexicon.load("wordfreq:en:100")
  assert len(words) == 100 and "the" in words
  bad = tmp_path / "bad.txt"
  bad.write_bytes(b"\xff\xfe\x00word")
  for spec, match in (
    ("wordfreq:en", "expected wordfreq:LANG:N"),
    (str(tmp_path / "none.txt"), "no such file"),
    (str(bad), "not UTF-8"),
  ):
    with pytest.raises(errors.UserError, match=match):
      ctc_lexicon.load(spec)
  with pytest.raises(errors.UserError, match="no word in the model's charset"):
    ctc_lexicon.LexiconDecoder(["ÿ"], charset_lib.Charset.named("lower36"))
