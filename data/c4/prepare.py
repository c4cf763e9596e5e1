"""C4, the natural-text (Common Crawl) pre-pre-training baseline.

  python data/c4/prepare.py          # embedded: 50 C4 documents (~17K tokens), a smoke test only
  python data/c4/prepare.py --source hf --max_tokens 100000000
                                     # allenai/c4 en (json.gz, stdlib only)

Embedded source: the type=="c4" documents of text_compression/samples.jsonl in the pinned PyPI
wheel evals==3.0.1.post1 (downloaded, never installed). C4 is ODC-BY.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from data.cli import prepare_main  # noqa: E402
from data.common import pip_download  # noqa: E402

HF = {"train": ("allenai/c4", "en/c4-train.*.json.gz"),
      "val": ("allenai/c4", "en/c4-validation.*.json.gz"), "column": "text",
      "licence": "ODC-BY-1.0"}


def embedded():
    from data.web.prepare import SAMPLES, samples

    return samples(pip_download("evals"), "c4"), {
        "sources": ["evals==3.0.1.post1 " + SAMPLES[0] + ' type "c4"'],
        "licence": "ODC-BY-1.0 (C4)"}


if __name__ == "__main__":
    prepare_main("c4", __doc__, embedded, HF)
