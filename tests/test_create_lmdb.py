"""create_lmdb: your own images + labels -> a clovaai LMDB; image decoding of every bad kind."""

import io
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from sslocr_jax.data import create_lmdb, images, sources
from tests.helpers import ROOT


def _png(array, mode=None, **save):
  buf = io.BytesIO()
  im = Image.fromarray(array) if mode is None else Image.fromarray(array, mode)
  im.save(buf, "PNG", **save)
  return buf.getvalue()


def _word(seed=0, h=20, w=60):
  return np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8)


def bad_image_files():
  """{name: (bytes, expected RGB array or the start of the error reason)}: every kind."""
  rgb = _word(1)
  rgba = np.zeros((10, 30, 4), np.uint8)
  rgba[2:5, 3:9] = (255, 0, 0, 255)  # red text on a transparent background
  composited = np.full((10, 30, 3), 255, np.uint8)
  composited[2:5, 3:9] = (255, 0, 0)
  gray16 = (np.arange(300, dtype=np.uint16).reshape(10, 30) % 256) * 257  # exact in 8 bits
  png16 = cv2.imencode(".png", gray16)[1]
  pal = Image.fromarray(rgb).convert("P")
  palette = np.asarray(pal.convert("RGB"))
  jpeg = cv2.imencode(".jpg", rgb[:, :, ::-1])[1].tobytes()
  return {
    "rgb.png": (_png(rgb), rgb),
    "gray.png": (_png(rgb[:, :, 0]), np.repeat(rgb[:, :, :1], 3, 2)),
    "rgba.png": (_png(rgba), composited),
    "gray16.png": (png16.tobytes(), np.repeat((gray16 // 257).astype(np.uint8)[:, :, None], 3, 2)),
    "palette.png": (_save(pal), palette),
    "tiny.png": (_png(rgb[:1, :1]), rgb[:1, :1]),
    "empty.png": (b"", "empty image"),
    "text.png": (b"this is not an image\n", "not an image"),
    "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated or corrupt JPEG"),
    "huge.png": (_png(np.zeros((1, 1), np.uint8))[:16] + _huge_ihdr(), "too large"),
  }


def _save(im):
  buf = io.BytesIO()
  im.save(buf, "PNG")
  return buf.getvalue()


def _huge_ihdr():
  """The rest of a PNG claiming 100000 x 100000 pixels (IHDR, an empty IDAT, IEND)."""
  import struct  # pylint: disable=g-import-not-at-top
  import zlib  # pylint: disable=g-import-not-at-top

  body = struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0)
  chunk = lambda kind, b: (
    struct.pack(">I", len(b)) + kind + b + struct.pack(">I", zlib.crc32(kind + b))
  )
  return (
    body + struct.pack(">I", zlib.crc32(b"IHDR" + body)) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")
  )


@pytest.mark.parametrize("name", sorted(bad_image_files()))
def test_decode_every_image_kind(name):
  data, want = bad_image_files()[name]
  if isinstance(want, str):
    with pytest.raises(images.DecodeError, match=want):
      images.decode(data)
  else:
    np.testing.assert_array_equal(images.decode(data), want)


def _folder(tmp_path):
  """Images + a label file with every problem; returns (folder, labels file, good labels)."""
  d = tmp_path / "crops"
  (d / "sub").mkdir(parents=True)
  files = bad_image_files()
  for name, (data, _) in files.items():
    (d / "sub" / name).write_bytes(data)
  lines = [
    "sub/rgb.png\tHello_World!",  # 1 ok
    "sub/gray.png\tcafe",  # 2 ok
    "",  # 3 blank: ignored
    "sub/rgba.png\tRGBA",  # 4 ok, re-encoded (alpha)
    "sub/missing.png\tgone",  # 5 missing file
    "sub/empty.png\tx",  # 6 empty file
    "sub/text.png\ty",  # 7 not an image
    "sub/gray16.png\t",  # 8 empty label
    "sub/palette.png\tcafé",  # 9 out of charset
    "sub/truncated.jpg\tz",  # 10 truncated
    "no tab here",  # 11 no tab
    "sub/tiny.png\t" + "a" * 30,
  ]  # 12 too long: kept, noted
  labels = tmp_path / "gt.txt"
  labels.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return d, labels, ["Hello_World!", "cafe", "RGBA", "a" * 30]


def test_create_from_label_file_with_bad_lines(tmp_path, capsys):
  d, labels, good = _folder(tmp_path)
  out = tmp_path / "lmdb"
  rc = create_lmdb.main(["--images", str(d), "--labels", str(labels), "--output", str(out)])
  text = capsys.readouterr().out
  assert rc == 1
  assert f"wrote {out}: 4 of 11 written" in text
  for kind, where in [
    ("missing files", "line 5 (sub/missing.png)"),
    ("images that do not decode", "line 6 (sub/empty.png) (empty image (0 bytes))"),
    ("empty labels", "line 8"),
    ("lines without a tab", "line 11"),
    ("labels with characters outside the charset", "line 9"),
    ("labels longer than max_len=25", "line 12"),
  ]:
    line = next(ln for ln in text.splitlines() if kind in ln)
    assert where in line, (kind, line)
  assert "skipped 3 images that do not decode" in text and "line 10" in text
  src = sources.LmdbSource(str(out))
  assert [src[i]["label"] for i in range(len(src))] == good
  np.testing.assert_array_equal(src[0]["image"], bad_image_files()["rgb.png"][1])
  np.testing.assert_array_equal(src[2]["image"], bad_image_files()["rgba.png"][1])
  assert not (tmp_path / "lmdb.partial").exists()
  # An existing output is refused (exit 2), then --check validates it: every record good.
  assert create_lmdb.main(["--images", str(d), "--labels", str(labels), "--output", str(out)]) == 2
  assert "exists" in capsys.readouterr().err
  assert create_lmdb.main(["--check", str(out)]) == 0
  assert "check: 4 of 4 records good" in capsys.readouterr().out


def test_filename_labels_and_check_of_a_bad_lmdb(tmp_path, capsys):
  d = tmp_path / "words"
  (d / "a").mkdir(parents=True)
  (d / "b").mkdir()
  cv2.imwrite(str(d / "a" / "Hello.png"), _word(2))
  cv2.imwrite(str(d / "b" / "Hello.png"), _word(3))
  (d / "b" / "oops.png").write_bytes(b"")
  out = tmp_path / "lmdb"
  assert (
    create_lmdb.main(
      ["--images", str(d), "--filename_labels", "--output", str(out), "--charset", "lower36"]
    )
    == 1
  )
  text = capsys.readouterr().out
  assert "2 of 3 written" in text and "b/oops.png (empty image (0 bytes))" in text
  assert [r["label"] for r in sources.LmdbSource(str(out))] == ["Hello", "Hello"]
  # A hand-made LMDB with bad records: --check names each by record number.
  bad = tmp_path / "bad"
  sources.write_lmdb(
    str(bad), [(_word(4), "fine"), (b"junk", "x"), (_word(5), ""), (_word(6), "Straße")]
  )
  assert create_lmdb.main(["--check", str(bad)]) == 1
  text = capsys.readouterr().out
  assert "check: 1 of 4 records good" in text
  assert (
    "record 2 (undecodable image (4 bytes): not an image" in text
    and "empty labels: record 3" in text
  )
  assert "record 4 'Straße'" in text


def test_cli_usage_error_exit_code(tmp_path):
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "sslocr_jax.data.create_lmdb",
      "--images",
      str(tmp_path / "nope"),
      "--labels",
      "x",
      "--output",
      str(tmp_path / "o"),
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    check=False,
  )
  assert r.returncode == 2 and "is not a folder" in r.stderr and "Traceback" not in r.stderr
