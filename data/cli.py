"""The command line every data/<domain>/prepare.py shares (prepare_main): it parses the flags,
then prepares the folder from the embedded corpus (data/build.py) or from the Hugging Face Hub
(data/hub.py). It lives apart from both so that imports run one way: cli -> hub -> build -> common.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

from data.build import prepare_embedded
from data.common import BYTES_SUFFIX, ROOT, TOKENIZERS, show
from data.hub import RETRIES, prepare_hf
from util import (PLAIN_ERRNO, UserError, check_writable, one_line_errors, sweep_temporaries,
                  write_failure)


def _parser(domain, doc, hf):
    """The flags of data/<domain>/prepare.py; `hf` supplies the Hub defaults shown in --help."""
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", choices=["embedded", "hf"], default="embedded",
                   help="embedded: small corpus from pinned PyPI files (default); "
                        "hf: full corpus from the Hub")
    p.add_argument("--tokenizer", choices=sorted(TOKENIZERS), default="gpt2",
                   help="gpt2: GPT-2 BPE ids (full scale, GPU); bytes: UTF-8 bytes + a document "
                        f"separator, 257 symbols, into data/{domain}{BYTES_SUFFIX} "
                        "(CPU-scale runs)")
    p.add_argument("--out_dir", default=None,
                   help=f"where train.bin, val.bin, meta.json go (default data/{domain}, or "
                        f"data/{domain}{BYTES_SUFFIX} with --tokenizer bytes)")
    official = ", ignored: hf has an official validation split)" if hf.get("val") else ")"
    p.add_argument("--val_fraction", type=float, default=None,
                   help="held-out fraction of documents (default 0.1 embedded, "
                        f"{hf.get('val_fraction', 0.0005)} hf" + official)
    p.add_argument("--seed", type=int, default=None,
                   help=f"split seed (default 1337 embedded, {hf.get('seed', 1337)} hf)")
    p.add_argument("--max_tokens", type=int, default=None,
                   help="stop once train has this many tokens (whole documents; "
                        "default: everything)")
    p.add_argument("--max_val_tokens", type=int, default=None,
                   help="hf: stop once val has this many tokens "
                        "(default: max_tokens/10 if max_tokens is set)")
    p.add_argument("--num_proc", type=int, default=os.cpu_count() or 1,
                   help="hf: tokenizer processes")
    p.add_argument("--endpoint", default=os.environ.get("HF_ENDPOINT", "https://huggingface.co"),
                   help="hf: Hub URL (default: $HF_ENDPOINT or https://huggingface.co)")
    p.add_argument("--revision", default="main",
                   help="hf: dataset git revision (pin a commit sha to reproduce)")
    p.add_argument("--hf_token", default=os.environ.get("HF_TOKEN"),
                   help="hf: access token (default: $HF_TOKEN)")
    p.add_argument("--retries", type=int, default=RETRIES,
                   help="hf: further tries of a request after a dropped connection, timeout, "
                        "429 or 5xx (waiting 1, 2, 4, ... s; a download resumes where it stopped)")
    return one_line_errors(p)


def _check_args(p, args, domain, hf):
    """Refuse impossible flag values (one "error:" line), then fill in the defaults that depend
    on --source and --tokenizer."""
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
    if args.val_fraction is None:
        args.val_fraction = 0.1 if emb else hf.get("val_fraction", 0.0005)
    if args.seed is None:
        args.seed = 1337 if emb else hf.get("seed", 1337)
    if args.max_val_tokens is None and args.max_tokens is not None:
        args.max_val_tokens = max(1, args.max_tokens // 10)


def _prepare(args, domain, embedded, hf):
    """Write the folder from the chosen source; returns its meta.json."""
    if args.source == "embedded":
        docs, meta = embedded()
        return prepare_embedded(args.out_dir, docs, args.val_fraction, args.seed,
                                {"domain": domain, "source": "embedded", **meta}, args.max_tokens,
                                args.tokenizer)
    return prepare_hf(args.out_dir, hf, args.endpoint, args.revision, args.hf_token,
                      args.val_fraction, args.seed, args.max_tokens, args.max_val_tokens,
                      args.num_proc, meta={"domain": domain}, retries=args.retries)


def prepare_main(domain, doc, embedded, hf, argv=None):
    """Command line shared by data/<domain>/prepare.py. `embedded()` returns (documents, meta);
    `hf` describes the Hub source (see data/hub.py's prepare_hf)."""
    p = _parser(domain, doc, hf)
    args = p.parse_args(argv)
    _check_args(p, args, domain, hf)
    try:
        check_writable(args.out_dir, "--out_dir")   # before any download or tokenization
    except UserError as e:
        sys.exit(f"error: {e}")
    shown = {k: ("***" if k == "hf_token" and v else show(v) if k == "out_dir" else v)
             for k, v in vars(args).items()}
    print("config:", json.dumps(shown))
    t0 = time.time()
    created = not Path(args.out_dir).exists()
    for name in sweep_temporaries(args.out_dir):     # token files of a killed earlier run
        print(f"note: removed {show(Path(args.out_dir) / name)}, left by an interrupted write",
              file=sys.stderr)
    try:
        meta = _prepare(args, domain, embedded, hf)
    except (UserError, OSError) as e:
        if isinstance(e, OSError):                       # e.g. the disk filled while writing
            if e.errno not in PLAIN_ERRNO:
                raise
            e = write_failure(e.filename or args.out_dir, e)
        if created and Path(args.out_dir).exists() and not any(Path(args.out_dir).iterdir()):
            Path(args.out_dir).rmdir()  # a failed first run leaves no empty folder behind
        script = show(sys.argv[0]) if argv is None else f"data/{domain}/prepare.py"
        retry = " ".join(["python", script, *(sys.argv[1:] if argv is None else argv)])
        sys.exit(f"error: {e} (nothing was overwritten; retry: {retry})")
    for s in ("train", "val"):
        path = show(Path(args.out_dir) / (s + ".bin"))
        print(f"{path}: {meta['documents'][s]:,} documents, {meta['tokens'][s]:,} tokens")
    print(f"done in {time.time() - t0:.1f}s")
    return meta
