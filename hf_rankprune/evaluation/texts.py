"""Offline English text for perplexity: the corpus the demo model was trained on, and its held-out split.

Sources: Python's `pydoc_data.topics` (always there) and, when installed, the Debian packages `fortunes`,
`dict-devil` and `python3.11-doc` (reST sources). A document is held out when the hash of its id falls in
the first `HELDOUT_FRACTION` of the range, so training (scripts/train_demo_model.py) and evaluation agree.

Evaluation never reads those packages: `heldout_texts()` reads `assets/heldout_text.jsonl.gz`, shipped in the
package and built from the held-out split by `scripts/build_heldout_text.py` (31,121 tokens of the demo tokenizer in
15 documents: Python documentation, fortunes), so every machine scores the same text. Its texts are the Python
documentation (PSF license) and fortunes (the `fortunes` package's public-domain and freely redistributable files).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import os
from pathlib import Path

HELDOUT_FRACTION = 0.03
SOURCES = ("pydoc", "fortunes", "devil", "pydoc-rst")
HELDOUT_PATH = Path(__file__).resolve().parent.parent / "assets" / "heldout_text.jsonl.gz"
FORTUNES_DIR = Path("/usr/share/games/fortunes")
DEVIL_DICT = Path("/usr/share/dictd/devil.dict.dz")
PYDOC_SOURCES = Path("/usr/share/doc/python3.11/html/_sources")


def load_documents(sources: tuple[str, ...] = SOURCES) -> list[tuple[str, str]]:
    """(document id, text) pairs from the sources that are available on this machine."""
    docs: list[tuple[str, str]] = []
    if "pydoc" in sources:
        from pydoc_data import topics

        docs += [(f"pydoc:{name}", text) for name, text in sorted(topics.topics.items())]
    if "fortunes" in sources and FORTUNES_DIR.is_dir():
        for path in sorted(FORTUNES_DIR.iterdir()):
            if path.suffix or path.name in ("art", "ascii-art"):
                continue
            u8 = path.with_name(path.name + ".u8")
            raw = (u8 if u8.exists() else path).read_bytes().decode("utf-8", errors="replace")
            entries = [e.strip("\n") for e in raw.split("\n%\n") if e.strip()]
            for i in range(0, len(entries), 20):  # documents of ~20 fortunes
                docs.append((f"fortunes:{path.name}:{i}", "\n\n".join(entries[i : i + 20])))
    if "devil" in sources and DEVIL_DICT.exists():
        chunks = gzip.decompress(DEVIL_DICT.read_bytes()).decode("utf-8", errors="replace").split("\n\n")
        for i in range(0, len(chunks), 40):
            docs.append((f"devil:{i}", "\n\n".join(chunks[i : i + 40])))
    if "pydoc-rst" in sources and PYDOC_SOURCES.is_dir():
        for path in sorted(glob.glob(str(PYDOC_SOURCES / "**" / "*.rst.txt"), recursive=True)):
            docs.append((f"pydoc-rst:{os.path.relpath(path, PYDOC_SOURCES)}", Path(path).read_text(errors="replace")))
    return [(i, t) for i, t in docs if t.strip()]


def is_heldout(doc_id: str, fraction: float = HELDOUT_FRACTION) -> bool:
    return int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def heldout_documents(path: str | os.PathLike = HELDOUT_PATH) -> list[tuple[str, str]]:
    """(document id, text) of the packaged held-out text, in its order."""
    import json

    with gzip.open(path, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [(row["id"], row["text"]) for row in rows]


def heldout_texts() -> list[str]:
    """The packaged held-out documents (never trained on by the demo model): the same text on every machine."""
    return [text for _, text in heldout_documents()]
