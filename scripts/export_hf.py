"""Export a run as a Hugging Face Llama folder (config.json and weights) that
transformers.LlamaForCausalLM.from_pretrained loads, e.g. for lm-eval-harness (README,
'Hugging Face'); scripts/hf.py does the conversion, and reads such a folder back as train.py
--init_from.

  python scripts/export_hf.py out/web-nca out/hf/web-nca
  python -c "from transformers import LlamaForCausalLM as M; M.from_pretrained('out/hf/web-nca')"

Weights go to model.safetensors when safetensors is installed, else pytorch_model.bin;
transformers itself is not needed to export.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import guard  # noqa: E402
from scripts import hf  # noqa: E402
from model import load_checkpoint  # noqa: E402
from util import cli, run_checkpoint, script_parser  # noqa: E402


@cli
def main(argv=None):
    p = script_parser(__doc__)
    p.add_argument("run", metavar="RUN", help="run folder of train.py or a ckpt.pt")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an export in OUT_DIR")
    args = p.parse_args(argv)
    ck_path = run_checkpoint(args.run, "RUN")
    guard.check_export(args, ck_path)
    weights = hf.to_folder(load_checkpoint(ck_path), args.out_dir)
    print(f"wrote {Path(args.out_dir) / 'config.json'} and {weights}")
    return weights


if __name__ == "__main__":
    main()
