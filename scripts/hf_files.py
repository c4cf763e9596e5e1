"""What an export holds beside the weights, written in plain Python (no transformers,
tokenizers or safetensors needed): the tokenizer files, generation_config.json and the README.md
model card. scripts/export_hf.py writes them with the weights into one folder.

Tokenizers, each with the project's ids:
  gpt2   vocab.json + merges.txt from the GPT-2 BPE ranks in .cache/gpt2.tiktoken (the merges
         recovered by replaying BPE on each token), <|endoftext|> = 50256
  bytes  the same byte-level BPE format with no merges: id b is byte b, <|endoftext|> = 256
"""
import base64
import functools
import json

from data.common import TOKENIZERS, gpt2_bpe_path

EOT_TEXT = "<|endoftext|>"
# every name an export may write: with --overwrite, these (and only these) may be replaced
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
CARD = "README.md"


@functools.lru_cache(maxsize=None)
def byte_to_unicode():
    """GPT-2's printable stand-in for each byte (what vocab.json and merges.txt are written in)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b if b in keep else next(extra)) for b in range(256)}


def text_of(token):
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


def gpt2_ranks():
    # (never downloaded here: a GPT-2 run was trained on data whose preparation wrote it)
    lines = (line.split() for line in gpt2_bpe_path(download=False).read_bytes().splitlines()
             if line)
    return {base64.b64decode(tok): int(rank) for tok, rank in lines}


def last_merge(token, ranks):
    """The pair of tokens whose merge made `token`: BPE (lowest rank first) on its bytes, with
    only the merges older than it, stops at exactly two parts."""
    parts = [bytes([b]) for b in token]
    limit = ranks[token]
    while len(parts) > 2:
        best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], limit))
        if ranks.get(parts[best] + parts[best + 1], limit) >= limit:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    assert len(parts) == 2, token                 # holds for every rank file BPE can produce
    return parts


def tokenizer_files(kind, vocab_size, max_length):
    """{file name: text} of the tokenizer of a `kind` run ("gpt2" or "bytes"), or {} for a
    vocabulary transformers has no tokenizer for (NCA, Dyck), or a model with fewer rows than the
    tokenizer has ids: the weights still export."""
    if kind not in TOKENIZERS or vocab_size < TOKENIZERS[kind][0]:
        return {}
    eot = TOKENIZERS[kind][1]
    if kind == "gpt2":
        ranks = gpt2_ranks()
        vocab = {text_of(tok): rank for tok, rank in ranks.items()}
        merges = [" ".join(map(text_of, last_merge(tok, ranks)))
                  for tok, _ in sorted(ranks.items(), key=lambda kv: kv[1]) if len(tok) > 1]
    else:
        vocab = {text_of(bytes([b])): b for b in range(256)}
        merges = []
    vocab[EOT_TEXT] = eot
    special = {"bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT}
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": max_length,
              "add_prefix_space": False, "add_bos_token": False, "clean_up_tokenization_spaces":
              False, "errors": "replace", **special,
              "added_tokens_decoder": {str(eot): {
                  "content": EOT_TEXT, "lstrip": False, "rstrip": False, "normalized": False,
                  "single_word": False, "special": True}}}
    return {"vocab.json": json.dumps(vocab, ensure_ascii=False) + "\n",
            "merges.txt": "#version: 0.2\n" + "".join(m + "\n" for m in merges),
            "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
            "special_tokens_map.json": json.dumps(special, indent=2) + "\n"}


def generation_config(config):
    """generation_config.json: the document separator ends a generation (and pads a batch)."""
    eot = config.get("eos_token_id")
    ids = {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot} if eot is not None \
        else {}
    return json.dumps({"_from_model_config": True, **ids}, indent=2) + "\n"


def last_val_loss(metrics):
    """(step, val_loss) of the last validation record of a run's metrics.jsonl, or None."""
    vals = [r for r in metrics if r.get("kind") == "val" and "val_loss" in r]
    return (vals[-1]["step"], vals[-1]["val_loss"]) if vals else None


def model_card(ck, metrics, weights, has_tokenizer):
    """README.md: what the model is, how it was made, the licence and how to load it."""
    rec = ck.get("config") or {}
    vocab = (ck.get("vocab") or {}).get("kind", "unknown")
    prov = rec.get("provenance") or {}
    args = ck["model_args"]
    arm = rec.get("arm", "unknown")
    stage1 = (f"stage 1 on `{rec['ppt_source']}` for {rec['ppt_tokens']:,} tokens"
              if rec.get("ppt_source") and rec.get("ppt_tokens") else
              "no stage 1 (trained from a fresh initialization)" if arm == "scratch" else
              f"stage 1 source `{rec.get('ppt_source', 'not recorded')}`")
    domain = rec.get("data_dir") or rec.get("domain") or "not recorded"
    what = "stage-2 language model" if ck.get("stage") == "lang" else f"stage {ck.get('stage')}"
    lines = ["---", "license: mit", "library_name: transformers", "pipeline_tag: text-generation",
             "tags: [llama, neural-cellular-automata, nca-pre-pre-training]", "---", "",
             f"# {arm} ({vocab} tokens)", "",
             "A small Llama-architecture language model from the reference implementation of "
             "*Training Language Models via Neural Cellular Automata* (NCA pre-pre-training), "
             "exported with `scripts/export_hf.py`.", "",
             "## What it is", "",
             f"- arm: `{arm}`; {what}; {stage1}",
             f"- domain: `{domain}`; tokenizer: `{vocab}`",
             f"- tokens seen in this stage: {ck.get('tokens', 0):,} ({ck.get('step', 0):,} steps)",
             f"- shape: {args['n_layer']} layers, {args['n_head']} heads, width "
             f"{args['n_embd']}, context {args['block_size']}, vocabulary {args['vocab_size']}"]
    val = last_val_loss(metrics)
    if val:        # (train.py logs the loss per token; bits per byte is eval.py's, on the data)
        lines.append(f"- final validation loss (step {val[0]:,}): {val[1]:.4f} nats per token "
                     "(bits per byte: not in the run's metrics; `python eval.py RUN` reports it)")
    else:
        lines.append("- validation loss: not recorded (no metrics.jsonl beside the checkpoint)")
    commit = prov.get("git_commit")
    lines += ["", "## How it was made", "",
              f"- commit: `{commit}`" + (" (working tree differed from it)"
                                         if prov.get("git_dirty") else "") if commit else
              "- commit: not recorded",
              f"- command: `{prov['command']}`" if prov.get("command") else
              "- command: not recorded",
              f"- weights: `{weights}`, float32", "", "## Licence", "",
              "MIT, as the code that trained it.", "", "## Usage", "", "```python",
              "from transformers import AutoModelForCausalLM" +
              ", AutoTokenizer" * has_tokenizer,
              'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")']
    if has_tokenizer:
        lines += ['tok = AutoTokenizer.from_pretrained("path/to/this/folder")',
                  'ids = tok("The meaning of", return_tensors="pt").input_ids',
                  "print(tok.decode(model.generate(ids, max_new_tokens=20, "
                  "do_sample=False)[0]))"]
    else:       # NCA or Dyck tokens, or fewer rows than the tokenizer has ids: no text
        lines += ["import torch", "# this folder has no tokenizer: the model reads the run's own "
                  f"ids ({vocab}), not text", "logits = model(torch.tensor([[0, 1, 2]])).logits"]
    lines += ["```", ""]
    return "\n".join(lines)
