"""Chinese prose: natural language in another script, a stage-1 control (docs/method.md,
'Stage-1 controls'). At byte level a Chinese character is three UTF-8 bytes, so a body warmed up
on it has seen natural language whose byte statistics share nothing with English.

  python data/zh/prepare.py --tokenizer bytes                   # embedded, ~1.27 MB of UTF-8
  python data/zh/prepare.py --tokenizer bytes --max_tokens 71696  # as many bytes as C4's train
  python data/zh/prepare.py --source hf --max_tokens 100000000  # mC4 Chinese (allenai/c4)

Embedded source: the 1,930 Chinese parables (short stories, 100-1,500 characters) of
parable-to-moral-match/parable-to-moral-match-zh.jsonl in the pinned PyPI wheel
evals==3.0.1.post1 (downloaded, never installed): the story of each prompt, without the question
and answer choices that follow it. MIT, as the wheel's LICENSE.md: this data set is not among
those it lists with licences of their own.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from data.build import dedup  # noqa: E402
from data.cli import prepare_main  # noqa: E402
from data.common import pip_download, read_member  # noqa: E402

PARABLES = ("evals/registry/data/parable-to-moral-match/parable-to-moral-match-zh.jsonl",
            "99029f198b105dfa200005217548f9662f73262417f6cdb1d5c503f20cba2e68")
QUESTION = "\nWhich moral is this story attempting to convey?"    # where each story ends
# mC4's Chinese part, as allenai/c4 lays it out (not exercised here: the Hub is unreachable)
HF = {"train": ("allenai/c4", "multilingual/c4-zh.tfrecord-*.json.gz"),
      "val": ("allenai/c4", "multilingual/c4-zh-validation.tfrecord-*.json.gz"),
      "column": "text", "licence": "ODC-BY-1.0"}


def stories(jsonl):
    """The story of every prompt (the user message up to the question)."""
    out = []
    for line in jsonl.decode().splitlines():
        if line.strip():
            prompt = json.loads(line)["input"][1]["content"]
            out.append(prompt[:prompt.index(QUESTION)].strip())
    return dedup(out)


def embedded():
    return stories(read_member(pip_download("evals"), *PARABLES)), {
        "sources": ["evals==3.0.1.post1 " + PARABLES[0] + " (the stories)"],
        "licence": "MIT (evals==3.0.1.post1, per its LICENSE.md)"}


if __name__ == "__main__":
    prepare_main("zh", __doc__, embedded, HF)
