"""Synthetic renderer: determinism, label bounds, font split, font packages, unreadable fonts."""

import os
import pickle

import matplotlib
import numpy as np
import pytest

from sslocr_jax.data import render

_MPL_TTF = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")


@pytest.fixture(scope="module")
def renderer():
  return render.Renderer(seed=3)


def test_deterministic_by_seed_and_index(renderer):
  img, label = renderer.render(11)
  for i in (0, 5, 12):  # render order does not matter
    renderer.render(i)
  fresh = pickle.loads(pickle.dumps(render.Renderer(seed=3)))  # as a grain worker
  img2, label2 = fresh.render(11)
  assert label2 == label
  np.testing.assert_array_equal(img2, img)
  assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[0] == 32
  assert img.shape[2] == 3


def test_different_index_or_seed_differs(renderer):
  samples = [renderer.render(i) for i in range(20)]
  assert len({label for _, label in samples}) >= 15
  other = render.Renderer(seed=4)
  assert [other.render(i)[1] for i in range(20)] != [l for _, l in samples]
  a, b = samples[0][0], samples[1][0]
  assert a.shape != b.shape or not np.array_equal(a, b)


def test_labels_in_charset_and_length_bounds(renderer):
  for i in range(300):
    img, label = renderer.render(i)
    assert 1 <= len(label) <= 25, (i, label)
    assert set(label) <= set(render.CHARS), (i, label)
    assert img.std() > 3, (i, label)  # text is visible against the background
  short = render.Renderer(seed=0, max_len=4)
  assert all(1 <= len(short.render(i)[1]) <= 4 for i in range(100))


def test_fixed_width():
  img, _ = render.Renderer(seed=1, height=48, width=160).render(0)
  assert img.shape == (48, 160, 3)


def test_font_splits_disjoint():
  train = render.faces_for_split("train")
  heldout = render.faces_for_split("heldout")
  assert train and heldout
  assert not {f.family for f in train} & {f.family for f in heldout}
  assert set(train) | set(heldout) == set(render.faces_for_split("all"))
  r = render.Renderer(seed=0, font_split="heldout")
  used = {r.faces[r.sample_text(i)[0]].family for i in range(50)}
  assert used <= set(render.HELDOUT_FAMILIES)
  with pytest.raises(ValueError, match="font_split"):
    render.Renderer(font_split="test")


def test_font_dirs_split_by_family(tmp_path):
  data = open(os.path.join(_MPL_TTF, "DejaVuSans.ttf"), "rb").read()
  for fam in ("Alpha", "Beta", "Gamma", "Delta", "Epsilon", "Zeta"):
    for style in ("Regular", "Bold"):
      (tmp_path / f"{fam}-{style}.ttf").write_bytes(data)
  kw = dict(font_dirs=[str(tmp_path)])
  user = lambda split: {f for f in render.faces_for_split(split, **kw) if f.kind == "file"}
  train, heldout = user("train"), user("heldout")
  assert len(train | heldout) == 12 and train and heldout
  assert not {f.family for f in train} & {f.family for f in heldout}
  r = render.Renderer(seed=0, fonts=[str(tmp_path / "Beta-Bold.ttf")])
  assert [f.name for f in r.faces] == ["Beta-Bold"] and r.render(0)[1]


def test_unsupported_glyphs_are_dropped_from_the_label():
  # STIXSizOneSymReg maps only ()/[\]_{} of the 94 characters.
  r = render.Renderer(seed=0, fonts=[os.path.join(_MPL_TTF, "STIXSizOneSymReg.ttf")], word_prob=0.0)
  labels = [r.render(i)[1] for i in range(30)]
  assert all(set(l) <= set("()/[\\]_{}") and l for l in labels)


def test_unreadable_font_names_the_file(tmp_path):
  bad = tmp_path / "Broken-Regular.ttf"
  bad.write_bytes(b"this is not a font")
  with pytest.raises(ValueError, match="Broken-Regular.ttf"):
    render.Renderer(fonts=[str(bad)])
  with pytest.raises(ValueError, match="Broken-Regular.ttf"):
    render.Renderer(font_dirs=[str(tmp_path)], font_split="all")
  with pytest.raises(ValueError, match="missing.ttf"):
    render.Renderer(fonts=[str(tmp_path / "missing.ttf")])


def test_computer_modern_faces_are_held_out_and_skip_their_tex_glyphs():
  """cmr10 & co. draw "<" as an inverted "!" (TeX OT1 codes): such characters never appear in
  a label drawn with them; the typewriter face keeps them. All are held-out families."""
  heldout = {f.name: f for f in render.faces_for_split("heldout")}
  assert {"cmr10", "cmti10", "cmss10", "cmtt10"} <= set(heldout)
  assert not {f.name for f in render.faces_for_split("train")} & {"cmr10", "cmtt10"}
  r = render.Renderer(seed=0, fonts=None, font_split="heldout")
  supported = {f.name: r._face_data(i)[1] for i, f in enumerate(r.faces)}  # pylint: disable=protected-access
  assert not set('<>{}|_\\"') & supported["cmr10"] and "$" not in supported["cmti10"]
  assert set("<>{}|_") <= supported["cmtt10"] and set("azAZ09.,!?") <= supported["cmr10"]


def test_font_package_faces_are_train_only_and_draw_every_character():
  """The pip font packages' families (render._PYPKG_FACES) are train families."""
  train = render.faces_for_split("train")
  pkg = [f for f in train if f.kind == "pypkg"]
  assert {f.family for f in pkg} == {
    "SourceSerifPro",
    "SourceSansPro",
    "Roboto",
    "Caladea",
    "Lato",
    "HankenGrotesk",
    "RedHatDisplay",
    "Manrope",
    "FjallaOne",
    "FredokaOne",
  }
  assert len(train) == 64 and len(pkg) == 38
  assert not {f.family for f in render.faces_for_split("heldout")} & {f.family for f in pkg}
  r = render.Renderer(seed=0, fonts=None, font_split="train")
  for i, f in enumerate(r.faces):
    if f.kind == "pypkg":
      assert r._face_data(i)[1] == set(render.CHARS), f.name  # pylint: disable=protected-access
  used = {r.faces[r.sample_text(i)[0]].family for i in range(400)}
  assert {f.family for f in pkg} <= used


def test_heldout_stream_does_not_depend_on_the_font_packages(monkeypatch):
  """The held-out set (and benchmarks/vs_tesseract.py's lines) stays what it was before the font
  packages joined: same faces in the same order, same labels, same pixels."""
  names = [f.name for f in render.faces_for_split("heldout")]
  assert names == (
    ["STIXGeneral", "STIXGeneralBol", "STIXGeneralItalic", "STIXGeneralBolIta"]
    + ["cmr10", "cmb10", "cmti10", "cmss10", "cmtt10"]
    + ["spacemo", "spacembo", "spacemit", "spacembi", "ubuntu", "ubuntubo", "ubuntuit"]
    + ["ubuntubi", "ubuntm", "ubuntmbo", "ubuntmit", "ubuntmbi"]
  )
  r = render.Renderer(seed=3000017, font_split="heldout")  # vs_tesseract's seed
  labels = [r.render(i)[1] for i in range(8)]
  assert labels == ["Net", "2446pm", "2B@Q.", "jdu", "Gb", "maher", "Lap", "browsing"]
  monkeypatch.setattr(render, "_PYPKG_FACES", {})
  without = render.Renderer(seed=3000017, font_split="heldout")
  for i in range(8):
    img, label = without.render(i)
    assert label == labels[i]
    np.testing.assert_array_equal(img, r.render(i)[0])


def test_missing_font_package_fails_naming_it_but_heldout_still_renders(monkeypatch):
  faces = render._PYPKG_FACES  # pylint: disable=protected-access
  absent = {"Absent": ("font_absent_xyz", ("Absent-Regular.ttf",))}  # a package not installed
  monkeypatch.setattr(render, "_PYPKG_FACES", {**faces, **absent})
  with pytest.raises(ModuleNotFoundError, match="pip install font-absent-xyz"):
    render.Renderer(font_split="train")
  assert render.Renderer(font_split="heldout").render(0)[1]
