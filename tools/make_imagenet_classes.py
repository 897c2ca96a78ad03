"""Writes lr_jax/data/imagenet_classes.tsv (the 1000 ImageNet-1k classes).

Source: the WordNet synset list and synset-to-lemma table that the `timm`
package ships as data (Apache-2.0). timm is NOT a dependency of lr_jax; fetch
the wheel once and point this script at its `_info` folder:

  pip download timm --no-deps -d /tmp/timm
  (cd /tmp/timm && unzip -o -q timm-*.whl 'timm/data/_info/*')
  python tools/make_imagenet_classes.py --info_dir /tmp/timm/timm/data/_info

The class index is the position of the wnid in `imagenet_synsets.txt`, which is
the sorted-wnid order used by the ImageNet-1k label ids of the MaskGIT
checkpoints (checked: 7 cock, 281 tabby, 285 Egyptian cat, 291 lion).

Columns (tab separated, one header row):
  index    class id 0..999
  wnid     WordNet id, e.g. n02129165
  name     short readable name: the first WordNet lemma, except for the few
           classes whose first lemma is shared by another class (crane,
           cardigan, maillot), which get a qualified name from NAME_OVERRIDES
  lemmas   all WordNet lemmas of the synset, joined with '|'
  aliases  extra common words added by hand (EXTRA_ALIASES), joined with '|'
"""
import argparse
import collections
import pathlib

# Classes whose first lemma collides with another class's first lemma.
NAME_OVERRIDES = {
    134: "crane (bird)",
    517: "crane (machine)",
    264: "Cardigan Welsh corgi",
    474: "cardigan (sweater)",
    638: "maillot (tights)",
    639: "tank suit",
}

# Everyday words missing from the ImageNet lemma lists.
EXTRA_ALIASES = {
    7: ["rooster"],
}

_ANCHORS = {7: "cock", 281: "tabby", 285: "Egyptian cat", 291: "lion"}


def build_rows(info_dir: pathlib.Path) -> list[tuple[int, str, str, str, str]]:
  wnids = [line.strip() for line in
           (info_dir / "imagenet_synsets.txt").read_text().splitlines()
           if line.strip()]
  if len(wnids) != 1000 or len(set(wnids)) != 1000:
    raise ValueError(f"expected 1000 unique synsets, got {len(wnids)}")
  lemma_table = {}
  for line in (info_dir / "imagenet_synset_to_lemma.txt").read_text().splitlines():
    if line.strip():
      wnid, lemmas = line.split("\t", 1)
      lemma_table[wnid] = [t.strip() for t in lemmas.split(",") if t.strip()]
  rows = []
  for index, wnid in enumerate(wnids):
    lemmas = lemma_table[wnid]
    name = NAME_OVERRIDES.get(index, lemmas[0])
    aliases = EXTRA_ALIASES.get(index, [])
    rows.append((index, wnid, name, "|".join(lemmas), "|".join(aliases)))
  counts = collections.Counter(row[2].lower() for row in rows)
  duplicates = [name for name, count in counts.items() if count > 1]
  if duplicates:
    raise ValueError(f"readable names not unique: {duplicates}")
  for index, first_lemma in _ANCHORS.items():
    if rows[index][3].split("|")[0] != first_lemma:
      raise ValueError(f"class {index} is {rows[index]}, expected {first_lemma}")
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--info_dir", type=pathlib.Path, required=True)
  parser.add_argument(
      "--out", type=pathlib.Path,
      default=pathlib.Path(__file__).resolve().parents[1]
      / "lr_jax" / "data" / "imagenet_classes.tsv")
  args = parser.parse_args()
  rows = build_rows(args.info_dir)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    f.write("index\twnid\tname\tlemmas\taliases\n")
    for row in rows:
      f.write("\t".join(str(v) for v in row) + "\n")
  print(f"wrote {len(rows)} classes to {args.out}")


if __name__ == "__main__":
  main()
