"""Build `hf_rankprune/assets/heldout_text.jsonl.gz`, the held-out text that perplexity reads.

The documents are the held-out split (`hf_rankprune.evaluation.texts.is_heldout`, the rule the demo model's training
also used, so the demo model never saw them) of Python's `pydoc_data` and the Debian packages `fortunes`,
`dict-devil` and `python3.11-doc`. Those packages are needed only to rebuild the asset, never to use it:

    apt-get install -y fortunes dict-devil python3.11-doc
    python scripts/build_heldout_text.py [--tokens 30000]

Sources are taken in turn (round robin, each in id order), whole documents, until the demo tokenizer counts at least
`--tokens` tokens (documents joined by its eos token, as perplexity joins them).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys

from hf_rankprune.evaluation.texts import (
    DEVIL_DICT,
    FORTUNES_DIR,
    HELDOUT_PATH,
    PYDOC_SOURCES,
    SOURCES,
    is_heldout,
    load_documents,
)
from hf_rankprune.loading import DEMO_MODEL_PATH


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=30_000)
    parser.add_argument("--out", default=str(HELDOUT_PATH))
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(DEMO_MODEL_PATH))
    documents = [(i, t) for i, t in load_documents(SOURCES) if is_heldout(i)]
    by_source: dict[str, list[tuple[str, str]]] = {}
    for doc_id, text in documents:
        by_source.setdefault(doc_id.split(":")[0], []).append((doc_id, text))
    missing = [str(path) for path in (FORTUNES_DIR, DEVIL_DICT, PYDOC_SOURCES) if not path.exists()]
    if missing:
        print(f"error: {', '.join(missing)} missing: apt-get install -y fortunes dict-devil python3.11-doc",
              file=sys.stderr)  # fmt: skip
        return 2
    chosen, total = [], 0
    queues = [list(docs) for _, docs in sorted(by_source.items())]
    while total < args.tokens and any(queues):
        for queue in queues:
            if queue and total < args.tokens:
                doc_id, text = queue.pop(0)
                chosen.append({"id": doc_id, "text": text})
                total += len(tokenizer.encode(text, add_special_tokens=False)) + 1
    if total < args.tokens:
        print(f"error: the held-out split has only {total} tokens, fewer than --tokens {args.tokens}", file=sys.stderr)
        return 2
    payload = "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in chosen).encode("utf-8")
    with open(args.out, "wb") as handle:  # mtime 0: the same documents give the same bytes
        with gzip.GzipFile(filename="", mode="wb", fileobj=handle, mtime=0, compresslevel=9) as archive:
            archive.write(payload)
    sources = sorted({doc["id"].split(":")[0] for doc in chosen})
    print(f"wrote {args.out}: {len(chosen)} documents ({', '.join(sources)}), {total} tokens of the demo tokenizer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
