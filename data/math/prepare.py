"""Math text, standing in for the paper's OpenWebMath domain.

  python data/math/prepare.py        # embedded: CHAMP competition math + mpmath docs (~215K tokens)
  python data/math/prepare.py --source hf    # full OpenWebMath, ~14.7B tokens (needs pyarrow)

Embedded sources (pinned PyPI wheels, downloaded, never installed):
  champ-dataset==1.0.0 (MIT): the human-written problems with their hints, step-wise solutions and
    answers, and the concepts. The model outputs in the same file (GPT-3.5/4, PaLM 2, Llama 2;
    often wrong) are left out.
  mpmath==1.3.0 (BSD-3-Clause): the documentation strings of mpmath/function_docs.py (LaTeX math).
No PyPI/Debian/npm package carries OpenWebMath, GSM8K or MATH, so this is the closest offline text.
"""
import ast
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from data.cli import prepare_main  # noqa: E402
from data.common import pip_download, read_member  # noqa: E402

CHAMP = ("champ_dataset/dataset_files/v0.json",
         "72fa7727c8c3d4377d297b2cd171dc35ad86e2cfe9df2043131ba8a5389e5a71")
MPMATH = ("mpmath/function_docs.py",
          "8383cff27e882d798770bc80e74b312ba4e6a7f678fe944dfb00c4ad4f03d62e")
HF = {"train": ("open-web-math/open-web-math", "data/*.parquet"), "val": None, "column": "text",
      "val_fraction": 0.0005, "seed": 2357, "licence": "ODC-BY-1.0"}


def champ_documents(champ):
    docs = []
    for p in champ["problems"].values():
        steps = [s["_text"] for s in p["solution"]["steps"]]
        hints = [champ["hints"][h]["_text"] for h in p["ch_list"] if h in champ["hints"]]
        hints = [h for h in hints if h not in steps]  # some hints repeat a solution step verbatim
        text = f"Problem: {p['_text']}\n\n"
        text += "".join(f"Hint: {h}\n" for h in hints) + ("\n" if hints else "")
        docs.append(text + "Solution: " + " ".join(steps) + f"\n\nAnswer: {p['_answer']}")
    for c in champ["concepts"].values():
        docs.append((f"{c['name'][0].upper()}{c['name'][1:]}: " if c["name"] else "") + c["_text"])
    return docs


def mpmath_documents(source):
    # function_docs.py is a list of `name = r"""docstring"""` assignments; short ones are stubs
    strings = [n.value.value for n in ast.parse(source).body
               if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
               and isinstance(n.value.value, str)]
    return [s.strip("\n") for s in strings if len(s) > 200]


def embedded():
    champ = json.loads(read_member(pip_download("champ-dataset"), *CHAMP))
    mp = read_member(pip_download("mpmath"), *MPMATH).decode()
    return champ_documents(champ) + mpmath_documents(mp), {
        "sources": ["champ-dataset==1.0.0 " + CHAMP[0]
                    + " (human-written problems, hints, solutions, concepts)",
                    "mpmath==1.3.0 " + MPMATH[0] + " (docstrings longer than 200 characters)"],
        "licence": "MIT (CHAMP, (c) 2024 Mao, Kim, Zhou); BSD-3-Clause (mpmath)"}


if __name__ == "__main__":
    prepare_main("math", __doc__, embedded, HF)
