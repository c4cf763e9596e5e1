"""Writing a prepared folder: documents -> deduplicated train/val split -> uint16 token files
(encode_documents, TokenWriter) and meta.json last (write_dataset). prepare_embedded() does it for
an in-memory corpus (the embedded ones, from pinned PyPI files); data/hub.py streams the Hub
corpora through the same writers, and data/cli.py is the prepare.py command line over both.
Reading a prepared folder back is data/common.py's job.
"""
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from data.common import DTYPE, TOKENIZERS, gpt2_encoding
from util import UserError, atomic_write


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
        raise UserError(f"need at least 2 documents to split, got {len(docs)}")
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
    atomic_write(Path(out_dir) / "meta.json", json.dumps(meta, indent=2) + "\n")
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
