r"""Make a clovaai-format LMDB from your own word images; check an existing one.

    python -m sslocr_jax.data.create_lmdb --images DIR --labels FILE --output OUT \
        [--charset printable94|lower36|FILE] [--max_len 25] [--keep_out_of_charset]
    python -m sslocr_jax.data.create_lmdb --images DIR --filename_labels --output OUT
    python -m sslocr_jax.data.create_lmdb --check OUT [--charset ...]

FILE holds one `relative/path<TAB>label` line per image (the convention of
clovaai/deep-text-recognition-benchmark's create_lmdb_dataset.py and baudm/parseq), paths
relative to DIR. `--filename_labels` instead takes every image under DIR (recursive, sorted)
with its file name without the extension as the label (`crops/a/Hello.png` -> "Hello"; put
repeated words in different folders).

Every line is checked before anything is written for it: the file exists, the image decodes
(data/images.py: RGBA is composited onto white or black, 16-bit scaled, palette expanded), the label is
not empty and (unless `--keep_out_of_charset`) every character is in the charset. A failing
line is skipped and reported with its line number; labels longer than `--max_len` are kept
and reported (training drops them). Image and label go into one record together, in one
transaction, written to `OUT.partial` and renamed to OUT at the end: an interrupted run
leaves no LMDB at OUT, and no record ever has an image without its label.
Images are stored as their original bytes when OpenCV's plain decoding reads them right
(8-bit grayscale/RGB PNG, JPEG, BMP), else re-encoded as an 8-bit RGB PNG.

The summary gives the counts per problem and up to 5 examples each; the exit status is 0
when every line was written, 1 when some were skipped (or `--check` found problems), 2 for
a usage error (missing folder, OUT exists without `--overwrite`).

Record layout (data/sources.py reads it): b"num-samples" -> count, b"image-%09d" -> encoded
image, b"label-%09d" -> UTF-8 label, numbered from 1.
"""

import argparse
import collections
import os
import shutil
import sys

from sslocr_jax.data import charset as charset_lib
from sslocr_jax.data import images as images_lib

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
SHOW = 5  # examples printed per problem


class Report:
  """Problems by kind, each with (where, detail) examples; counts of what was written."""

  def __init__(self):
    self.problems = collections.defaultdict(list)  # kind -> [(where, detail)]
    self.notes = collections.defaultdict(list)  # kept but worth saying (too long)
    self.written = 0

  def problem(self, kind: str, where: str, detail: str = "") -> None:
    self.problems[kind].append((where, detail))

  def note(self, kind: str, where: str, detail: str = "") -> None:
    self.notes[kind].append((where, detail))

  @property
  def num_problems(self) -> int:
    return sum(len(v) for v in self.problems.values())

  def summary(self, total: int, what: str) -> str:
    lines = [
      f"{what}: {self.written} of {total} written"
      if what != "check"
      else f"check: {total - self.num_problems} of {total} records good"
    ]
    for title, table in (("skipped", self.problems), ("kept", self.notes)):
      for kind, items in sorted(table.items()):
        lines.append(
          f"  {title} {len(items)} {kind}: "
          + "; ".join(f"{w} {d}".strip() for w, d in items[:SHOW])
          + (" ..." if len(items) > SHOW else "")
        )
    return "\n".join(lines)


def _progress(iterable, total: int, desc: str):
  """A progress bar on stderr (tqdm; silent when stderr is not a terminal)."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  return tqdm(
    iterable, total=total, desc=desc, unit="img", file=sys.stderr, disable=None, leave=False
  )


def load_charset(name_or_file: str) -> charset_lib.Charset:
  if name_or_file in charset_lib.NAMED:
    return charset_lib.Charset.named(name_or_file)
  if os.path.isfile(name_or_file):
    return charset_lib.Charset.from_file(name_or_file)
  raise ValueError(
    f"--charset {name_or_file!r} is neither a named charset "
    f"({', '.join(sorted(charset_lib.NAMED))}) nor a file"
  )


def read_labels(path: str, report: Report) -> list[tuple[str, str, str]]:
  """`relative/path<TAB>label` lines -> [(where "FILE:N", relative path, label)]; lines
  without a tab are reported. Blank lines are ignored; the label keeps inner spaces."""
  out = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      line = line.rstrip("\r\n")
      if not line.strip():
        continue
      where = f"line {n}"
      if "\t" not in line:
        report.problem("lines without a tab", where, repr(line[:60]))
        continue
      rel, label = line.split("\t", 1)
      out.append((where, rel, label))
  return out


def filename_labels(folder: str) -> list[tuple[str, str, str]]:
  """Every image under `folder` (recursive, sorted) with its file stem as the label."""
  found = []
  for root, _, files in os.walk(folder):
    found += [
      os.path.relpath(os.path.join(root, f), folder)
      for f in files
      if f.lower().endswith(IMAGE_EXTS)
    ]
  return [(rel, rel, os.path.splitext(os.path.basename(rel))[0]) for rel in sorted(found)]


def check_label(
  label: str, where: str, cs, max_len: int, report: Report, keep_oov: bool = False
) -> bool:
  """True when the label may be written; problems and notes go to the report."""
  if not label:
    report.problem("empty labels", where)
    return False
  bad = sorted({c for c in cs.normalize(label) if c not in cs.chars})
  if bad and not keep_oov:
    report.problem(
      "labels with characters outside the charset", where, f"{label[:40]!r} ({''.join(bad)!r})"
    )
    return False
  if bad:
    report.note("labels with characters outside the charset", where, repr(label[:40]))
  if len(label) > max_len:
    report.note(f"labels longer than max_len={max_len}", where, f"({len(label)})")
  return True


def create(
  images_dir: str,
  entries,
  output: str,
  cs,
  max_len: int = 25,
  keep_oov: bool = False,
  overwrite: bool = False,
  map_size: int = 1 << 40,
) -> Report:
  """Writes the LMDB at `output` from entries [(where, relative path, label)]."""
  import lmdb  # pylint: disable=g-import-not-at-top

  report = Report()
  if os.path.exists(output) and not overwrite:
    raise FileExistsError(f"--output {output} exists (use --overwrite to replace it)")
  partial = output.rstrip("/") + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  env = lmdb.open(partial, map_size=map_size)
  n = 0
  txn = env.begin(write=True)
  try:
    for where, rel, label in _progress(entries, len(entries), "create_lmdb"):
      where = f"{where} ({rel})" if where != rel else rel
      path = os.path.join(images_dir, rel)
      if not os.path.isfile(path):
        report.problem("missing files", where)
        continue
      if not check_label(label, where, cs, max_len, report, keep_oov):
        continue
      with open(path, "rb") as f:
        data = f.read()
      try:
        image = images_lib.decode(data)
      except images_lib.DecodeError as e:
        report.problem("images that do not decode", where, f"({e})")
        continue
      if not images_lib.is_plain(data):
        data = images_lib.encode_png(image)
      n += 1
      txn.put(b"image-%09d" % n, data)
      txn.put(b"label-%09d" % n, label.encode("utf-8"))
      if n % 10000 == 0:  # bound the transaction's memory; a crash leaves only OUT.partial
        txn.commit()
        txn = env.begin(write=True)
    txn.put(b"num-samples", str(n).encode())
    txn.commit()
  except BaseException:
    txn.abort()
    env.close()
    raise
  env.close()
  report.written = n
  if os.path.exists(output):
    shutil.rmtree(output)
  os.replace(partial, output)
  return report


def check(folder: str, cs, max_len: int = 25) -> tuple[Report, int]:
  """Validates an existing LMDB record by record: (report, num-samples)."""
  from sslocr_jax.data import sources  # pylint: disable=g-import-not-at-top

  report = Report()
  if not os.path.isfile(os.path.join(folder, "data.mdb")):
    raise FileNotFoundError(f"--check {folder}: no data.mdb there (not an LMDB folder)")
  env = sources.lmdb_env(folder)
  with env.begin() as txn:
    raw = txn.get(b"num-samples")
    if raw is None:
      raise ValueError(f"--check {folder}: no b'num-samples' key (not a clovaai LMDB)")
    total = int(raw)
    for i in _progress(range(1, total + 1), total, "check"):
      where = f"record {i}"
      data, label = txn.get(b"image-%09d" % i), txn.get(b"label-%09d" % i)
      if data is None or label is None:
        report.problem("records without " + ("an image" if data is None else "a label"), where)
        continue
      try:
        label = bytes(label).decode("utf-8")
      except UnicodeDecodeError:
        report.problem("labels that are not UTF-8", where)
        continue
      if not check_label(label, where, cs, max_len, report):
        continue
      try:
        images_lib.decode(bytes(data))
      except images_lib.DecodeError as e:
        report.problem("images that do not decode", where, f"({e})")
  return report, total


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    prog="python -m sslocr_jax.data.create_lmdb",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--images", help="folder the label file's paths are relative to")
  p.add_argument("--labels", help="file of `relative/path<TAB>label` lines")
  p.add_argument(
    "--filename_labels",
    action="store_true",
    help="label = file name without extension, for every image under --images",
  )
  p.add_argument("--output", help="LMDB folder to write")
  p.add_argument("--check", metavar="DIR", help="validate an existing LMDB instead")
  p.add_argument(
    "--charset",
    default="printable94",
    help="printable94 (default), lower36, or a file with one character per line",
  )
  p.add_argument("--max_len", type=int, default=25, help="longer labels are reported (kept)")
  p.add_argument(
    "--keep_out_of_charset",
    action="store_true",
    help="write labels with characters outside the charset (reported) too",
  )
  p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
  a = p.parse_args(argv)
  try:
    cs = load_charset(a.charset)
    if a.check:
      report, total = check(a.check, cs, a.max_len)
      print(report.summary(total, "check"))
      return 1 if report.num_problems else 0
    if not (a.images and a.output) or bool(a.labels) == bool(a.filename_labels):
      p.error(
        "give --images and --output, and one of --labels / --filename_labels (or --check DIR)"
      )
    if not os.path.isdir(a.images):
      raise FileNotFoundError(f"--images {a.images} is not a folder")
    pre = Report()
    entries = read_labels(a.labels, pre) if a.labels else filename_labels(a.images)
    report = create(a.images, entries, a.output, cs, a.max_len, a.keep_out_of_charset, a.overwrite)
    for kind, items in pre.problems.items():
      report.problems[kind] += items
    print(report.summary(len(entries) + pre.num_problems, f"wrote {a.output}"))
    return 1 if report.num_problems else 0
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
