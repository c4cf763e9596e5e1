import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Numbers from the official implementation; tests/fixtures/README.md describes them.
FIXTURES = ROOT / "tests" / "fixtures"


def make_domain(folder, n_train=4000, n_val=1000, seed=0, vocab=50257, tokenizer="gpt2"):
    """A tiny prepared corpus (random ids of `tokenizer`) in the layout data/common.py validates."""
    import numpy as np
    from data.build import TokenWriter, write_dataset
    rng = np.random.default_rng(seed)
    writers = {}
    for split, n in (("train", n_train), ("val", n_val)):
        w = TokenWriter(Path(folder) / f"{split}.bin")
        w.write(rng.integers(0, vocab, n), 1)
        writers[split] = w
    write_dataset(folder, writers, {"source": "test", "domain": Path(folder).name}, tokenizer)
    return Path(folder)


# What a test needs beyond the repository comes from what .ci/run prepares; without it the test
# skips with the command that prepares it (tests never download, and never write these files).
BPE = ROOT / ".cache" / "gpt2.tiktoken"
PREPARE_WEB = "python data/web/prepare.py"


def needs_bpe():
    """A skip mark for tests that tokenize with GPT-2: they need .cache/gpt2.tiktoken."""
    import pytest
    return pytest.mark.skipif(not BPE.exists(), reason=f"{BPE.relative_to(ROOT)} is absent: run "
                              f"{PREPARE_WEB} (it writes it; tests never download)")
