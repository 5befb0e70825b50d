"""Charset: index layout, encode/decode, out-of-charset policy, metric filter."""

import numpy as np
import pytest

from sslocr_jax.data import charset as cs


def test_default_layout():
  c = cs.Charset()
  assert c.num_chars == 94 and c.num_classes == 97 == len(c)
  assert (c.eos, c.pad, c.unk, c.bos) == (94, 95, 96, 97)
  assert c.chars[0] == "0" and c.chars[-1] == "~"


def test_encode_decode_round_trip():
  c = cs.Charset()
  ids = c.encode("Hello,World!!", max_len=25)
  assert ids.dtype == np.int32 and ids.shape == (26,)
  assert ids[13] == c.eos and (ids[14:] == c.pad).all()
  assert c.decode(ids) == "Hello,World!!"
  assert c.decode([c.chars.index("a"), c.eos, c.chars.index("b")]) == "a"
  full = c.encode("x" * 25, max_len=25)
  assert full[-1] == c.eos and c.decode(full) == "x" * 25


def test_rejections_and_oov_policy():
  drop = cs.Charset(oov="drop")
  assert drop.check("", 25) == "empty"
  assert drop.check("a" * 26, 25) == "too_long"
  assert drop.check("café", 25) == "out_of_charset"
  assert drop.check("cafe", 25) is None
  with pytest.raises(ValueError, match="out_of_charset"):
    drop.encode("café", 25)
  unk = cs.Charset(oov="unk")
  ids = unk.encode("café", 25)
  assert ids[3] == unk.unk and unk.decode(ids) == "caf" + cs.UNK_STR
  ids, keep, reasons = drop.encode_batch(["ok", "", "naïve", "b" * 30], 25)
  assert keep.tolist() == [True, False, False, False]
  assert reasons == [None, "empty", "out_of_charset", "too_long"]
  assert (ids[1:] == drop.pad).all()


def test_lower36_and_file(tmp_path):
  c = cs.Charset.named("lower36")
  assert c.num_classes == 39
  assert c.decode(c.encode("AbC9", 25)) == "abc9"
  path = tmp_path / "chars.txt"
  path.write_text("a\nb\n \nç\n", encoding="utf-8")
  f = cs.Charset.from_file(str(path))
  assert f.chars == "ab ç" and f.decode(f.encode("ç a", 5)) == "ç a"
  path.write_text("a\nbc\n", encoding="utf-8")
  with pytest.raises(ValueError, match="chars.txt:2"):
    cs.Charset.from_file(str(path))
  with pytest.raises(ValueError, match="unknown charset"):
    cs.Charset.named("nope")


@pytest.mark.parametrize(
  "raw,filtered",
  [
    ("Hello, World!", "helloworld"),
    ("U.S.A.", "usa"),
    ("$4.99", "499"),
    ("café", "caf"),
    ("---", ""),
    ("AbC123", "abc123"),
  ],
)
def test_filter_label_for_metric(raw, filtered):
  assert cs.filter_label_for_metric(raw) == filtered


def test_strip_policy_removes_out_of_charset_characters_as_clovaai_does():
  lower = cs.Charset.named("lower36", oov="strip")
  assert lower.check("Don't!", 25) is None
  np.testing.assert_array_equal(
    lower.encode("Don't!", 25)[:5], [lower.chars.index(c) for c in "dont"] + [lower.eos]
  )
  assert lower.check("?!", 25) == "empty"  # nothing left: dropped, counted as empty
  assert cs.Charset.named("lower36", oov="drop").check("Don't!", 25) == "out_of_charset"
