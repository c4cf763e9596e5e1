"""Export a run as a complete Hugging Face Llama folder, what save_pretrained and a tokenizer
save would write: the weights (model.safetensors when safetensors is installed, else
pytorch_model.bin), config.json, generation_config.json, the tokenizer (GPT-2's for GPT-2 runs,
a byte-level one with the project's ids for byte runs) and a README.md model card. Transformers
loads it with AutoTokenizer and AutoModelForCausalLM, lm-eval with --model hf (docs/evaluation.md,
'Hugging Face'); scripts/hf.py reads such a folder back as train.py --init_from.

  python scripts/export_hf.py out/web-nca out/hf/web-nca

The folder is written beside OUT_DIR under a temporary name and renamed into place: a failed
export leaves OUT_DIR as it was. A non-empty OUT_DIR is refused unless --overwrite, and even then
only an export's own files are replaced (any other file there is refused, by name). Exporting
needs neither transformers nor tokenizers nor safetensors; a GPT-2 run's tokenizer is built from
.cache/gpt2.tiktoken, which preparing its data wrote.
"""
import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import guard  # noqa: E402
from scripts import hf, hf_files  # noqa: E402
from model import load_checkpoint  # noqa: E402
from util import (UserError, atomic_write, check_writable, cli, read_metrics,  # noqa: E402
                  run_checkpoint, script_parser)


@cli
def main(argv=None):
    p = script_parser(__doc__)
    p.add_argument("run", metavar="RUN", help="run folder of train.py or a ckpt.pt")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (new, or empty)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export in OUT_DIR (only its own files)")
    args = p.parse_args(argv)
    ck_path = run_checkpoint(args.run, "RUN")
    check_export(args, ck_path)                 # before anything is read or written
    ck = load_checkpoint(ck_path)
    metrics = read_metrics(Path(ck_path).parent / "metrics.jsonl") if Path(ck_path).is_file() \
        else []
    out = Path(args.out_dir).resolve()          # (a name to stage beside, even for ".")
    stage = out.parent / f".{out.name}.{os.getpid()}.tmp"
    try:
        weights = write_export(ck, metrics, stage)
        swap_into_place(stage, out)
    finally:                                # a failed export leaves nothing of itself behind
        shutil.rmtree(stage, ignore_errors=True)
    print(f"wrote {args.out_dir}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return out / weights


def check_export(args, ck_path):
    """An export: a checkpoint LlamaForCausalLM can hold, and a folder it may write: new or empty,
    or with --overwrite one that holds only an export's own files (nothing else is replaced)."""
    ck = guard.peek(ck_path, "RUN")
    if ck["model_args"].get("head_bias"):
        raise UserError(f"{ck_path} is a stage-1 model whose output head has a bias, which "
                        "LlamaForCausalLM has no place for: export a stage-2 (language) run")
    out = Path(args.out_dir)
    check_writable(out, "OUT_DIR")
    if out.exists() and out.resolve() == Path.cwd().resolve():
        raise UserError(f"OUT_DIR {out} is the current folder, which the export would replace "
                        "(it renames a new folder into place): name a folder below it")
    there = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if there and not args.overwrite:
        raise UserError(f"OUT_DIR {out} is not empty ({there[0]}): choose a new folder, or pass "
                        "--overwrite to replace an earlier export there")
    own = {*hf.WEIGHTS, "config.json", "generation_config.json", *hf_files.TOKENIZER_FILES,
           hf_files.CARD}
    foreign = [name for name in there if name not in own or (out / name).is_dir()]
    if foreign:
        raise UserError(f"OUT_DIR {out} holds {foreign[0]}, which is not an export's file: "
                        "--overwrite replaces only an earlier export; move it or choose a new "
                        "folder")


def write_export(ck, metrics, folder):
    """Every file of the export of checkpoint `ck` into the new folder `folder`; returns the
    weight file's name."""
    config, state = hf.to_hf(ck)
    folder.mkdir(parents=True)
    weights = hf.save_weights(state, folder)
    kind = (ck.get("vocab") or {}).get("kind")
    args = ck["model_args"]
    tokenizer = hf_files.tokenizer_files(kind, args["vocab_size"], args["block_size"])
    files = {"config.json": json.dumps(config, indent=2) + "\n",
             "generation_config.json": hf_files.generation_config(config), **tokenizer,
             hf_files.CARD: hf_files.model_card(ck, metrics, weights, bool(tokenizer))}
    for name, text in files.items():
        atomic_write(folder / name, text)
    return weights


def swap_into_place(new, out):
    """Rename the finished folder `new` to `out`; an earlier export there (check_export
    allowed only an export's own files) is moved aside first and removed once `new` is in place,
    or moved back if the rename fails."""
    if not out.exists():
        os.replace(new, out)
        return
    old = out.parent / f".{out.name}.{os.getpid()}.old"
    os.replace(out, old)
    try:
        os.replace(new, out)
    except OSError:
        os.replace(old, out)
        raise
    with contextlib.suppress(OSError):
        shutil.rmtree(old)


if __name__ == "__main__":
    main()
