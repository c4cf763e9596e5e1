"""Control corpora for stage 1, each derived from a prepared byte-level folder (e.g. data/c4_bytes)
and written as a prepared folder of its own, so that `train.py --ppt_source text --ppt_data OUT`
pre-pre-trains on it exactly as on the natural text (docs/method.md, 'Stage-1 controls'):

  word_shuffle  each document's words (maximal runs of non-space bytes) in random order, the
                spaces between them in place: spelling and word frequencies kept, syntax gone
  unigram       i.i.d. bytes drawn with the split's byte frequencies: no words, no order
  uniform       i.i.d. bytes, uniform over 0..255: no structure at all

Document ends (the end-of-text token) stay where they are for word_shuffle; the i.i.d. controls
cut documents of the source's mean length. --tokens sets the size of each split's i.i.d. sample
(default: the source split's size; give at least the stage-1 budget so nothing repeats).

  python lab/make_controls.py data/c4_bytes --kind word_shuffle --out data/c4_bytes_words
  python lab/make_controls.py data/c4_bytes --kind uniform --tokens 1200000 --out data/uniform
"""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data.build import TokenWriter, write_dataset  # noqa: E402
from data.common import load_meta, load_tokens, show  # noqa: E402
from util import UserError, check_writable, cli, script_parser  # noqa: E402

KINDS = ("word_shuffle", "unigram", "uniform")
SPACE = np.frombuffer(b" \t\n\r\x0b\x0c", dtype=np.uint8)


def documents(tokens, eot):
    """The documents of a token array (each without its end-of-text token)."""
    ends = np.flatnonzero(tokens == eot)
    starts = np.concatenate([[0], ends[:-1] + 1])
    docs = [tokens[a:b] for a, b in zip(starts, ends)]
    if len(tokens) and (not len(ends) or ends[-1] < len(tokens) - 1):
        docs.append(tokens[(ends[-1] + 1) if len(ends) else 0:])
    return docs


def shuffle_words(doc, rng):
    """One document's words (maximal non-space runs) in random order; the spaces between them
    stay where they were, so no two words merge."""
    space = np.isin(doc, SPACE)
    edges = np.flatnonzero(np.diff(np.concatenate([[1], space.astype(np.int8), [1]])))
    starts, ends = edges[0::2], edges[1::2]                  # each word is doc[start:end]
    if len(starts) < 2:
        return doc
    words = [doc[a:b] for a, b in zip(starts, ends)]
    gaps = [doc[b:a] for b, a in zip(ends, np.append(starts[1:], len(doc)))]
    order = rng.permutation(len(words))
    return np.concatenate([doc[:starts[0]]] + [x for i, g in zip(order, gaps)
                                               for x in (words[i], g)])


def control_split(tokens, kind, eot, rng, size=None):
    """(tokens, documents) of one split of the control."""
    if kind == "word_shuffle":
        docs = documents(tokens, eot)
        out = np.concatenate([np.append(shuffle_words(d, rng), eot) for d in docs])
        return out, len(docs)
    body = tokens[tokens != eot]
    n_docs = max(1, int((tokens == eot).sum()))
    size = size or len(tokens)
    if kind == "unigram":
        p = np.bincount(body, minlength=256)[:256].astype(np.float64)
        out = rng.choice(256, size=size, p=p / p.sum())
    else:
        out = rng.integers(0, 256, size=size)
    doc_len = max(1, len(body) // n_docs)              # the source's mean document length
    out[doc_len::doc_len + 1] = eot
    return out, int((out == eot).sum())


@cli
def main(argv=None):
    p = script_parser(__doc__)
    p.add_argument("source", help="a prepared byte-level folder (e.g. data/c4_bytes)")
    p.add_argument("--kind", required=True, choices=KINDS, help="which control")
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument("--tokens", type=int, default=None,
                   help="tokens per split of an i.i.d. control (default: the source split's)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = p.parse_args(argv)
    meta = load_meta(args.source)
    if meta.get("tokenizer") != "bytes":
        raise UserError(f"{show(args.source)} is not byte-level (tokenizer "
                        f"{meta.get('tokenizer')!r}): prepare it with --tokenizer bytes")
    if args.tokens is not None and (args.tokens < 1 or args.kind == "word_shuffle"):
        raise UserError("--tokens is for the i.i.d. controls (unigram, uniform) and must be "
                        "at least 1")
    out = Path(args.out)
    if (out / "meta.json").exists() and not args.overwrite:
        raise UserError(f"{show(out)} exists: pass --overwrite to replace it, or another --out")
    check_writable(out, "--out")
    rng = np.random.default_rng(args.seed)
    writers = {}
    for split in ("train", "val"):
        tokens, docs = control_split(np.asarray(load_tokens(args.source, split)), args.kind,
                                     meta["eot"], rng, args.tokens)
        writers[split] = TokenWriter(out / f"{split}.bin")
        writers[split].write(tokens, docs)
    derived = {"source": f"{args.kind} control of {show(args.source)}", "domain": out.name,
               "licence": meta.get("licence") if args.kind != "uniform" else "none (random)",
               "control": {"kind": args.kind, "of": show(args.source), "seed": args.seed,
                           "tokens": args.tokens}}
    written = write_dataset(out, writers, derived, tokenizer="bytes")
    print(f"wrote {show(out)}: {args.kind} of {show(args.source)}, "
          + ", ".join(f"{s} {n:,} tokens" for s, n in written["tokens"].items()))
    return json.loads((out / "meta.json").read_text())


if __name__ == "__main__":
    main()
