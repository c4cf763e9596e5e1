"""Hugging Face Llama, both ways, without transformers: our GPT is a LlamaForCausalLM (the same
RMSNorm with float32 statistics, rotate-half RoPE, SwiGLU, separate q/k/v projections, untied
head, no biases), so a checkpoint converts by renaming tensors.

  export  to_hf(ck) and save_weights(state, folder): config.json and the weights
          (model.safetensors when safetensors is installed, else pytorch_model.bin);
          scripts/export_hf.py writes them, with the tokenizer and model card, as one folder
  import  read(path): such a folder, or a plain state dict in the Llama layout (also the official
          code's CustomLlamaModel: wte, layers, norm, output_proj) with its config.json beside
          it, as a train.py checkpoint dict; model.load_checkpoint calls it, so any of them works
          as train.py --init_from (a stage-1 body: fresh embeddings and head on transfer)

A stage-1 model's head has a bias, which LlamaForCausalLM cannot hold: it is refused on export,
and kept on import (the official stage-1 checkpoints have one).
"""
import json
import re
from pathlib import Path

import torch

from util import UserError, atomic_write

# our name -> the LlamaForCausalLM name; {i} is the block index
PER_BLOCK = {"norm1.weight": "input_layernorm.weight",
             "attn.q.weight": "self_attn.q_proj.weight", "attn.k.weight": "self_attn.k_proj.weight",
             "attn.v.weight": "self_attn.v_proj.weight", "attn.o.weight": "self_attn.o_proj.weight",
             "norm2.weight": "post_attention_layernorm.weight",
             "mlp.gate.weight": "mlp.gate_proj.weight", "mlp.up.weight": "mlp.up_proj.weight",
             "mlp.down.weight": "mlp.down_proj.weight"}
TOP = {"wte.weight": "model.embed_tokens.weight", "norm_f.weight": "model.norm.weight",
       "lm_head.weight": "lm_head.weight", "lm_head.bias": "lm_head.bias"}
# other spellings of the same tensors: the official CustomLlamaModel, DDP and torch.compile
ALIASES = {"wte.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
           "output_proj.weight": "lm_head.weight", "output_proj.bias": "lm_head.bias"}
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
           "pytorch_model.bin.index.json")


# ---------------------------------------------------------------- export

def hf_config(args, extra=None):
    """LlamaForCausalLM's config.json for our model_args, in transformers-5 keys (rope_parameters,
    dtype) and, where the older spelling costs nothing, transformers-4 keys too (rope_theta at the
    top, torch_dtype): both versions read the same folder."""
    d, heads = args["n_embd"], args["n_head"]
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": args["vocab_size"], "hidden_size": d,
            "intermediate_size": args.get("mlp_hidden") or 4 * d,
            "num_hidden_layers": args["n_layer"], "num_attention_heads": heads,
            "num_key_value_heads": heads, "head_dim": d // heads,
            "max_position_embeddings": args["block_size"],
            "rope_parameters": {"rope_theta": args["rope_theta"], "rope_type": "default"},
            "rope_theta": args["rope_theta"], "rms_norm_eps": args["norm_eps"],
            "hidden_act": "silu", "tie_word_embeddings": False, "attention_bias": False,
            "mlp_bias": False, "attention_dropout": 0.0, "initializer_range": 0.02,
            "pretraining_tp": 1, "use_cache": True, "dtype": "float32", "torch_dtype": "float32",
            **(extra or {})}


def to_hf(ck):
    """(config.json dict, state dict) of a train.py checkpoint (guard.check_export checked it has
    no head bias). Our vocabulary record rides along as "nca_pretrain", so import restores it."""
    state = {}
    for name, tensor in ck["model"].items():
        block = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
        hf_name = f"model.layers.{block[1]}.{PER_BLOCK[block[2]]}" if block else TOP[name]
        state[hf_name] = tensor.detach().to("cpu", torch.float32).contiguous()
    vocab = ck.get("vocab") or {}
    extra = {"nca_pretrain": {"vocab": vocab, "stage": ck.get("stage"),
                              "arm": (ck.get("config") or {}).get("arm")}}
    # the tokenizer's document separator, where it is known (GPT-2 <|endoftext|>, bytes 256)
    eot = {"gpt2": 50256, "bytes": 256}.get(vocab.get("kind"))
    if eot is not None and eot < ck["model_args"]["vocab_size"]:
        extra |= {"bos_token_id": eot, "eos_token_id": eot}
    return hf_config(ck["model_args"], extra), state


def save_weights(state, folder):
    """Write `state` into `folder` as model.safetensors when safetensors is installed, else
    pytorch_model.bin (transformers reads both); returns the file name."""
    try:
        from safetensors.torch import save_file
    except ImportError:                 # torch's own format
        save_file = None
    name = "model.safetensors" if save_file else "pytorch_model.bin"
    if save_file:
        atomic_write(Path(folder) / name,
                     lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    else:
        atomic_write(Path(folder) / name, lambda tmp: torch.save(state, tmp))
    return name


# ---------------------------------------------------------------- import

def is_state_dict(obj):
    """A plain dict of tensors in a Llama layout (some tensor of a decoder layer), not a
    train.py checkpoint (whose tensors are under "model")."""
    return isinstance(obj, dict) and "model" not in obj and bool(obj) and all(
        isinstance(v, torch.Tensor) for v in obj.values()) and any(
        re.search(r"(^|\.)layers\.\d+\.(self_attn|mlp)\.", k) for k in obj)


def read(path, device="cpu"):
    """A train.py checkpoint dict from a LlamaForCausalLM folder (config.json and weights)."""
    folder = Path(path)
    config = read_config(folder / "config.json", path)
    found = [f for f in WEIGHTS if (folder / f).is_file()]
    if not found:
        raise UserError(f"{path} is neither a train.py run nor a Hugging Face folder with "
                        f"weights (one of {', '.join(WEIGHTS)})")
    file = folder / found[0]
    files = [file]
    if file.name.endswith(".index.json"):           # sharded: the shards named by its map
        shard_map = json.loads(file.read_text())["weight_map"]
        files = [folder / f for f in dict.fromkeys(shard_map.values())]
    state = {}
    for f in files:
        state |= load_weights(f, device)
    return from_hf(state, config, path)


def read_config(file, path):
    if not file.is_file():
        raise UserError(f"{path}: a Llama state dict needs its config.json beside it "
                        "(num_attention_heads, rope_theta and rms_norm_eps are not in the "
                        "weights)")
    try:
        return json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{file} is not valid JSON") from None


def load_weights(file, device):
    if file.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UserError(f"{file} is in the safetensors format: pip install safetensors") \
                from None
        return load_file(str(file), device=str(device))
    try:
        return torch.load(file, map_location=device, weights_only=True)
    except Exception as e:          # truncated, not torch's format: one line, no trace
        raise UserError(f"cannot read {file}: {type(e).__name__}") from None


def from_state_dict(state, path):
    """A plain Llama-layout state dict read from the file `path`, with config.json beside it."""
    return from_hf(state, read_config(Path(path).parent / "config.json", path), path)


def from_hf(state, config, path):
    """The train.py checkpoint dict (stage "ppt": a body to transfer) of a Llama state dict in
    any of the layouts above and its config.json."""
    for key, want in (("num_key_value_heads", config.get("num_attention_heads")),
                      ("rope_scaling", None), ("attention_bias", False), ("mlp_bias", False),
                      ("hidden_act", "silu")):
        if config.get(key, want) != want:
            raise UserError(f"{path}: {key} {config[key]!r} is not this model's ({want!r}): "
                            "only plain Llama models convert")
    d, heads = config["hidden_size"], config["num_attention_heads"]
    if config.get("head_dim", d // heads) != d // heads:
        raise UserError(f"{path}: head_dim {config['head_dim']} is not hidden_size / "
                        f"num_attention_heads = {d // heads}")
    ours = {}
    for name, tensor in state.items():
        name = re.sub(r"^(module\.|_orig_mod\.)+", "", name)
        name = ALIASES.get(name, name)
        block = re.fullmatch(r"(?:model\.)?layers\.(\d+)\.(.+)", name)
        if name.endswith("rotary_emb.inv_freq") or name == "wpe.inv_freq":
            continue                                   # recomputed from rope_theta
        ours_name = {v: k for k, v in TOP.items()}.get(name)
        if block:
            ours_name = next((f"blocks.{block[1]}.{k}" for k, v in PER_BLOCK.items()
                              if v == block[2]), None)
        if ours_name is None:
            raise UserError(f"{path}: tensor {name!r} has no place in this model (a Llama "
                            "model without biases in its body)")
        ours[ours_name] = tensor.float()
    if "lm_head.weight" not in ours and config.get("tie_word_embeddings"):
        ours["lm_head.weight"] = ours["wte.weight"].clone()       # untied from here on
    hidden = config.get("intermediate_size", 4 * d)
    args = {"block_size": config.get("max_position_embeddings", 1024),
            "vocab_size": config["vocab_size"], "n_layer": config["num_hidden_layers"],
            "n_head": heads, "n_embd": d, "mlp_hidden": None if hidden == 4 * d else hidden,
            "attn_dropout": float(config.get("attention_dropout", 0.0)),
            "head_bias": "lm_head.bias" in ours, "rope_theta": float(config.get("rope_theta", 1e4)),
            "norm_eps": float(config.get("rms_norm_eps", 1e-6))}
    ours_rec = config.get("nca_pretrain") or {}
    return {"model": ours, "model_args": args, "stage": "ppt", "step": 0, "tokens": 0,
            "config": {"ppt_source": "hf", "init_from": str(path)},
            "vocab": ours_rec.get("vocab") or {"kind": "hf", "size": config["vocab_size"]},
            "nca": None}
