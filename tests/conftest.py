import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Numbers from the official implementation; tests/fixtures/README.md describes them.
FIXTURES = ROOT / "tests" / "fixtures"


def make_domain(folder, n_train=4000, n_val=1000, seed=0, vocab=50257):
    """A tiny prepared corpus (random GPT-2 ids) in the layout data/common.py validates."""
    import numpy as np
    from data.build import TokenWriter, write_dataset
    rng = np.random.default_rng(seed)
    writers = {}
    for split, n in (("train", n_train), ("val", n_val)):
        w = TokenWriter(Path(folder) / f"{split}.bin")
        w.write(rng.integers(0, vocab, n), 1)
        writers[split] = w
    write_dataset(folder, writers, {"source": "test", "domain": Path(folder).name})
    return Path(folder)
