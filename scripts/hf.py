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
and kept on import (the official stage-1 checkpoints have one). Everything else our model cannot
represent is refused on import, in one line naming the field or tensor, before a model is built
(check_config: RoPE scaling, tied embeddings, biases, GQA, fields it would ignore, bad sizes;
load_weights, shard_files, from_hf: unreadable files, non-tensors, shapes that do not fit).
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
    dtype) and the top-level rope_theta beside them, which is what transformers 4 reads (5 takes
    it too): both read the same folder. No torch_dtype: 4.56+ read dtype and warn on torch_dtype,
    and an older 4 loads float32 without either."""
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
            "pretraining_tp": 1, "use_cache": True, "dtype": "float32",
            **(extra or {})}


def to_hf(ck):
    """(config.json dict, state dict) of a train.py checkpoint (export_hf.check_export checked it
    has no head bias). Our vocabulary record rides along as "nca_pretrain", so import restores
    it."""
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
    files = [folder / f for f in shard_files(file)] if file.name.endswith(".index.json") \
        else [file]
    state = {}
    for f in files:
        state |= load_weights(f, device)
    return from_hf(state, config, path)


def shard_files(index):
    """The shard files a sharded folder's index names (its weight_map: tensor -> file), each
    checked to be there."""
    try:
        shard_map = json.loads(index.read_text())["weight_map"]
        ok = isinstance(shard_map, dict) and shard_map and all(
            isinstance(f, str) for f in shard_map.values())
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        ok = False
    if not ok:
        raise UserError(f"{index} is not a shard index (a JSON object whose weight_map maps each "
                        "tensor to its file): re-save the model, or remove the index")
    files = list(dict.fromkeys(shard_map.values()))
    missing = [f for f in files if not (index.parent / f).is_file()]
    if missing:
        raise UserError(f"{index} names the shard {missing[0]}, which is not in {index.parent}: "
                        "copy every shard into the folder")
    return files


def read_config(file, path):
    """config.json beside a Llama model, parsed and checked (check_config): refused before any
    weight is read."""
    if not file.is_file():
        raise UserError(f"{path}: a Llama state dict needs its config.json beside it "
                        "(num_attention_heads, rope_theta and rms_norm_eps are not in the "
                        "weights)")
    try:
        config = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{file} is not valid JSON") from None
    if not isinstance(config, dict):
        raise UserError(f"{file} is not a JSON object of settings: it holds a "
                        f"{type(config).__name__}")
    check_config(config, file)
    return config


def load_weights(file, device):
    """The tensors of one weight file: a truncated file, one that is not a state dict, or an entry
    that is not a tensor is refused in one line."""
    if file.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UserError(f"{file} is in the safetensors format: pip install safetensors") \
                from None
        try:
            return load_file(str(file), device=str(device))
        except Exception as e:      # SafetensorError: truncated, or not safetensors at all
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"cannot read {file} (truncated, or not a safetensors file): "
                            f"{why}") from None
    try:
        state = torch.load(file, map_location=device, weights_only=True)
    except Exception as e:          # truncated, not torch's format: one line, no trace
        raise UserError(f"cannot read {file}: {type(e).__name__}") from None
    if not isinstance(state, dict):
        raise UserError(f"{file} holds a {type(state).__name__}, not a state dict of tensors")
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{file}: entry {name!r} is a {type(value).__name__}, not a tensor")
    return state


# ---------------------------------------------------------------- what config.json may say

SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")   # needed
OPTIONAL_SIZES = ("intermediate_size", "max_position_embeddings", "num_key_value_heads",
                  "head_dim")
# the settings our model has, and the one value each may take where it has no knob for it
FIXED = {"hidden_act": "silu", "tie_word_embeddings": False, "attention_bias": False,
         "mlp_bias": False, "pretraining_tp": 1, "model_type": "llama"}
NUMBERS = ("rope_theta", "rms_norm_eps", "attention_dropout")
# fields that change nothing the model computes: token ids, dtypes, generation defaults,
# bookkeeping (what save_pretrained of transformers 4 or 5 may write)
HARMLESS = {"architectures", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id",
            "decoder_start_token_id", "dtype", "torch_dtype", "transformers_version", "use_cache",
            "initializer_range", "_name_or_path", "output_attentions", "output_hidden_states",
            "return_dict", "id2label", "label2id", "problem_type", "tokenizer_class",
            "nca_pretrain", "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder",
            "torchscript", "use_bfloat16", "tf_legacy_loss", "prefix", "task_specific_params",
            "finetuning_task", "add_cross_attention", "tie_encoder_decoder",
            "cross_attention_hidden_size", "pruned_heads", "max_length", "min_length",
            "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty",
            "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
            "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
            "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate",
            "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
            "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens"}


def is_size(v):
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def check_config(config, file):
    """Refuse a config.json our model cannot represent, naming the field: a missing or bad size,
    a setting it has no knob for (biases, tied embeddings, grouped-query attention, RoPE scaling,
    another activation) and any field it would silently ignore."""
    def bad(field, value, why):
        raise UserError(f"{file}: {field} {json.dumps(value)} {why}")
    for key in SIZES:
        if config.get(key) is None:
            raise UserError(f"{file}: {key} is missing (or null): a Llama config.json gives it")
    for key in SIZES + OPTIONAL_SIZES:
        if config.get(key) is not None and not is_size(config[key]):
            bad(key, config[key], "is not a positive integer")
    for key in NUMBERS:
        v = config.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not (v > 0 or key == "attention_dropout" and 0 <= v < 1)):
            bad(key, v, "is not a positive number" if key != "attention_dropout" else
                "is not a probability in [0, 1)")
    for key, want in FIXED.items():
        if config.get(key) is not None and config[key] != want:
            bad(key, config[key], f"cannot convert: this model has only {json.dumps(want)} "
                "(a plain Llama: untied embeddings, no biases, SiLU)")
    d, heads = config["hidden_size"], config["num_attention_heads"]
    if d % heads:
        bad("hidden_size", d, f"is not divisible by num_attention_heads {heads}")
    if config.get("num_key_value_heads") not in (None, heads):
        bad("num_key_value_heads", config["num_key_value_heads"], f"is not num_attention_heads "
            f"{heads}: this model has no grouped-query attention")
    if config.get("head_dim") not in (None, d // heads):
        bad("head_dim", config["head_dim"], f"is not hidden_size / num_attention_heads = "
            f"{d // heads}")
    rope_theta(config, file)
    known = {*SIZES, *OPTIONAL_SIZES, *FIXED, *NUMBERS, *HARMLESS, "rope_parameters",
             "rope_scaling"}
    for key, value in config.items():
        if key not in known and value is not None:
            bad(key, value, "is a setting this model does not have (it would be ignored): "
                "only plain Llama models convert")


def rope_theta(config, file):
    """The RoPE base, from either spelling: transformers 4's top-level rope_theta (with
    rope_scaling) or transformers 5's rope_parameters {rope_theta, rope_type}; only the default
    rope_type (no scaling) converts, and two spellings must agree."""
    thetas = {"rope_theta": config.get("rope_theta")}
    for key in ("rope_parameters", "rope_scaling"):
        params = config.get(key)
        if params is None:
            continue
        if not isinstance(params, dict):
            raise UserError(f"{file}: {key} {json.dumps(params)} is not an object")
        kind = params.get("rope_type", params.get("type", "default"))
        if kind != "default":
            raise UserError(f"{file}: {key}.rope_type {json.dumps(kind)} is RoPE scaling, which "
                            "this model does not have: only rope_type \"default\" converts")
        for name, value in params.items():
            if name not in ("rope_type", "type", "rope_theta"):
                raise UserError(f"{file}: {key}.{name} {json.dumps(value)} is a RoPE setting "
                                "this model does not have (it would be ignored)")
        theta = params.get("rope_theta")
        if theta is not None and (isinstance(theta, bool) or not isinstance(theta, (int, float))
                                  or theta <= 0):
            raise UserError(f"{file}: {key}.rope_theta {json.dumps(theta)} is not a positive "
                            "number")
        thetas[f"{key}.rope_theta"] = theta
    given = {k: v for k, v in thetas.items() if v is not None}
    if len(set(given.values())) > 1:
        raise UserError(f"{file}: " + " and ".join(f"{k} {v}" for k, v in given.items()) +
                        " disagree: give one RoPE base")
    return float(next(iter(given.values()), 1e4))           # transformers' default base


def from_state_dict(state, path):
    """A plain Llama-layout state dict read from the file `path`, with config.json beside it."""
    return from_hf(state, read_config(Path(path).parent / "config.json", path), path)


def shapes(args):
    """Our name -> the shape it must have, for model_args `args`."""
    d, v, h = args["n_embd"], args["vocab_size"], args["mlp_hidden"] or 4 * args["n_embd"]
    out = {"wte.weight": (v, d), "norm_f.weight": (d,), "lm_head.weight": (v, d)}
    per = {"norm1.weight": (d,), "norm2.weight": (d,), "attn.q.weight": (d, d),
           "attn.k.weight": (d, d), "attn.v.weight": (d, d), "attn.o.weight": (d, d),
           "mlp.gate.weight": (h, d), "mlp.up.weight": (h, d), "mlp.down.weight": (d, h)}
    for i in range(args["n_layer"]):
        out |= {f"blocks.{i}.{k}": s for k, s in per.items()}
    return out


def from_hf(state, config, path):
    """The train.py checkpoint dict (stage "ppt": a body to transfer) of a Llama state dict in
    any of the layouts above and its config.json (checked by check_config); a tensor without a
    place or of the wrong shape, or a missing one, is refused by name."""
    d, heads = config["hidden_size"], config["num_attention_heads"]
    hidden = config.get("intermediate_size") or 4 * d
    args = {"block_size": config.get("max_position_embeddings") or 1024,
            "vocab_size": config["vocab_size"], "n_layer": config["num_hidden_layers"],
            "n_head": heads, "n_embd": d, "mlp_hidden": None if hidden == 4 * d else hidden,
            "attn_dropout": float(config.get("attention_dropout") or 0.0),
            "head_bias": False, "rope_theta": rope_theta(config, path),
            "norm_eps": float(config.get("rms_norm_eps") or 1e-6)}
    want = shapes(args)
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
        if ours_name == "lm_head.bias":                # the official stage-1 head
            want[ours_name] = (args["vocab_size"],)
        if ours_name not in want:
            raise UserError(f"{path}: tensor {name!r} has no place in this model (a Llama "
                            f"model of {args['n_layer']} layers without biases in its body)")
        if tuple(tensor.shape) != want[ours_name]:
            raise UserError(f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                            f"config.json needs {want[ours_name]}")
        ours[ours_name] = tensor.float()
    missing = [k for k in want if k not in ours]
    if missing:
        raise UserError(f"{path}: tensor {missing[0]!r} (in our names) is missing from the "
                        "weights")
    args["head_bias"] = "lm_head.bias" in ours
    ours_rec = config.get("nca_pretrain") or {}
    return {"model": ours, "model_args": args, "stage": "ppt", "step": 0, "tokens": 0,
            "config": {"ppt_source": "hf", "init_from": str(path)},
            "vocab": ours_rec.get("vocab") or {"kind": "hf", "size": config["vocab_size"]},
            "nca": None}
