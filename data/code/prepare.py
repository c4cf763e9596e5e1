"""Python code, standing in for the paper's CodeParrot domain.

  python data/code/prepare.py        # embedded: this interpreter's standard library (~5M tokens)
  python data/code/prepare.py --source hf --max_tokens 1000000000
                                     # codeparrot-clean (json.gz, stdlib only)

Embedded source: the *.py files of the running interpreter's standard library (PSF-2.0), without
tests, GUI code and vendored packages; one document per file. The content depends on the Python
version and distribution, so both are recorded in meta.json.
"""
import platform
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from data.cli import prepare_main  # noqa: E402

EXCLUDE = {"test", "tests", "idle_test", "lib2to3", "idlelib", "tkinter", "turtledemo", "ensurepip",
           "site-packages", "dist-packages", "__pycache__"}
HF = {"train": ("codeparrot/codeparrot-clean-train", "*.json.gz"),
      "val": ("codeparrot/codeparrot-clean-valid", "*.json.gz"), "column": "content",
      "licence": "per-file GitHub licences (see each record's license field)"}


def embedded():
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    # sorted: the document order must not depend on the file system
    for path in sorted(stdlib.rglob("*.py")):
        if EXCLUDE.isdisjoint(path.relative_to(stdlib).parts[:-1]):
            try:
                docs.append(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                pass  # a handful of legacy-encoded files; not worth a decoder guess
    version = platform.python_version()
    return docs, {"sources": [f"standard library of Python {version} at {stdlib}"],
                  "licence": "PSF-2.0", "python": version,
                  "python_implementation": platform.python_implementation(),
                  "files_read": len(docs)}


if __name__ == "__main__":
    prepare_main("code", __doc__, embedded, HF)
