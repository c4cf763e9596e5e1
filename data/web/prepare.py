"""Web text, the paper's OpenWebText domain.

  python data/web/prepare.py         # embedded: OWT excerpts + full OWT documents (~190K tokens)
  python data/web/prepare.py --source hf     # full OpenWebText, ~9B tokens (needs pyarrow)

Embedded source: the pinned PyPI wheel evals==3.0.1.post1 (downloaded, never installed), field "0"
of schelling_point/owt_5.jsonl (1,000 OWT excerpts) plus the 50 type=="openwebtext" documents of
text_compression/samples.jsonl. The OWT part is CC0 per the wheel's LICENSE.md.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from data.build import dedup_prefixes  # noqa: E402
from data.cli import prepare_main  # noqa: E402
from data.common import pip_download, read_member  # noqa: E402

OWT5 = ("evals/registry/data/schelling_point/owt_5.jsonl",
        "095ceeb4ac1248bcaac4952056c6ccd5872410fc6a8b55d46244d57f27cfbb8b")
SAMPLES = ("evals/registry/data/text_compression/samples.jsonl",
           "11179ba0e05334ea712f70562e2486273056956714b8d8987bd7b037302be513")
# nanoGPT's OpenWebText split: test_size=0.0005, seed=2357
HF = {"train": ("Skylion007/openwebtext", "*.parquet"), "val": None, "column": "text",
      "val_fraction": 0.0005, "seed": 2357, "licence": "CC0-1.0"}


def samples(wheel, kind):
    rows = (json.loads(l) for l in read_member(wheel, *SAMPLES).decode().splitlines() if l.strip())
    return [r["text"] for r in rows if r["type"] == kind]


def embedded():
    wheel = pip_download("evals")
    lines = read_member(wheel, *OWT5).decode().splitlines()
    excerpts = [json.loads(line)["0"] for line in lines if line.strip()]
    # one full document starts with one of the excerpts: keep only the full one
    docs = dedup_prefixes(samples(wheel, "openwebtext") + excerpts)
    return docs, {"sources": ["evals==3.0.1.post1 " + OWT5[0] + ' field "0"',
                              "evals==3.0.1.post1 " + SAMPLES[0] + ' type "openwebtext"'],
                  "licence": "CC0-1.0 (OpenWebText part of evals, per its LICENSE.md)"}


if __name__ == "__main__":
    prepare_main("web", __doc__, embedded, HF)
