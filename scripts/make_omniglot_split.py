"""Write maml_cli/tasks/splits/omniglot.json: the fixed Omniglot character split.

The MAML reference code pools all 1623 characters of images_background and images_evaluation,
shuffles them and takes 1100 for meta-training, 100 for validation and the remaining 423 for
testing. Its shuffle depends on the directory listing order of the machine; this script fixes
it once: the character paths sorted by name (C locale), shuffled with Python's
random.Random(0), then cut 1100 / 100 / 423. The file is checked in, so every user gets the
same split; this script only documents how it was made.

    python scripts/make_omniglot_split.py ../shared/data
"""

import json
import random
import sys
import zipfile
from pathlib import Path

SIZES = {"train": 1100, "val": 100, "test": 423}
OUT = Path(__file__).resolve().parents[1] / "maml_cli" / "tasks" / "splits" / "omniglot.json"


def characters(root: Path) -> list[str]:
    found = set()
    for part in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(root / "omniglot" / f"{part}.zip") as archive:
            found.update(n.rsplit("/", 1)[0] for n in archive.namelist() if n.endswith(".png"))
    return sorted(found)


def main(root: str) -> None:
    names = characters(Path(root))
    assert len(names) == sum(SIZES.values()), len(names)
    random.Random(0).shuffle(names)
    split, start = {}, 0
    for name, size in SIZES.items():
        split[name] = sorted(names[start:start + size])
        start += size
    OUT.write_text(json.dumps(split, indent=1) + "\n")
    print(f"wrote {OUT}: " + ", ".join(f"{k} {len(v)}" for k, v in split.items()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
