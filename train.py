"""
Train the GPT in two stages (docs/method.md, 'Pipeline'):

  stage 1, "ppt" (pre-pre-training): next-token prediction on NCA trajectories (default), or on
           the baselines' sources: Dyck languages or natural text (sources.py);
  stage 2, "lang" (language pre-training): on a prepared corpus (data/<domain>), from scratch or
           from a stage-1 checkpoint whose embeddings and head are replaced (the transfer).

  python train.py --stage both --domain web ...            # one arm: stage 1, then stage 2
  python train.py --stage both --domain web --ppt_tokens 0  # the scratch arm
  python train.py --stage ppt ...  /  --stage lang --init_from out/x/ppt/ckpt.pt ...
  torchrun --nproc_per_node 8 train.py ...                  # data parallel

Stage-1 hyper-parameters are the --ppt_* flags, stage-2 ones the plain flags. A run folder holds
config.json, metrics.jsonl and ckpt.pt; with --stage both, stage 1 goes to <out_dir>/ppt/.
"""
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

import ckpt
import flags
from data.common import load_meta, load_tokens, probe_vocab
from model import GPT, copy_probe, evaluate
from sources import SOURCES, TextBatches, text_val_batches
from util import UserError, autocast, default_device, progress_bar

# Dense bf16 peak per GPU; the first name found in the device's name wins. The PCIe and NVL cards
# run slower clocks (and the PCIe H100 fewer SMs) than the SXM parts of the same name.
PEAK_FLOPS = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200 NVL", 835e12), ("GH200", 989e12),
              ("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
              ("4090", 165e12), ("A10", 125e12)]


def main(argv=None):
    args = flags.parse_args(argv, __doc__)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    dist, locks = {"rank": rank, "world": world}, []
    try:
        flags.check_flags(args, world)               # everything is checked before any write
        flags.check_inputs(args, flags.given_flags(argv), world)
        dist = setup_distributed(args, rank, world)
        if dist["device"].startswith("cuda"):   # TF32 for the model's float32 matmuls (NCA
            torch.set_float32_matmul_precision("high")   # generation stays exact regardless)
        ctx, args.dtype = autocast(args.dtype, dist["device"])
        out = Path(args.out_dir)
        do_ppt = "ppt" in flags.stages(args)
        ppt_out = out / "ppt" if args.stage == "both" else out
        ckpt.own_run_dirs(([ppt_out] if do_ppt else []) + ([out] if args.stage != "ppt" else []),
                     args, dist, locks)
        if dist["rank"] == 0:
            print(json.dumps(vars(args), default=str))
        if args.stage == "both" and args.resume and (out / "ckpt.pt").exists():
            do_ppt = False                                  # stage 2 already started: stage 1 done
            args.init_from = str(ppt_out / "ckpt.pt") if (ppt_out / "ckpt.pt").exists() else None
        result = {}
        if do_ppt:
            result["ppt"] = run_ppt(args, ppt_out, ctx, dist)
            if args.stage == "both":
                args.init_from = str(ppt_out / "ckpt.pt")
        if args.stage in ("lang", "both"):
            result["lang"] = run_lang(args, out, ctx, dist)
        return result
    except (ValueError, UserError, torch.cuda.OutOfMemoryError) as e:
        rank = f"[rank {dist['rank']}] " if dist["world"] > 1 else ""
        if isinstance(e, torch.cuda.OutOfMemoryError):
            e = ("out of GPU memory: pass a smaller --micro_batch / --ppt_micro_batch (or a "
                 "smaller --memory_gb for the automatic choice)")
        print(f"{rank}error: {e}", file=sys.stderr)
        raise SystemExit(2)
    finally:
        for lock in reversed(locks):
            ckpt.unlock_run_dir(*lock)
        if dist["world"] > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# -----------------------------------------------------------------------------------------------
# The two stages: data and model

def run_ppt(args, out, ctx, dist):
    source = SOURCES[args.ppt_source](args)
    vocab = args.ppt_vocab_size or source.vocab_size
    config = flags.model_config(args, vocab, head_bias=True)
    with torch.device("meta"):         # the model's shape, for the memory plan (allocates nothing)
        shape = GPT(config)
    hp = flags.stage_config(args, "ppt")
    hp.micro_batch, memory = plan_micro_batch(args, "ppt", hp, shape, dist)
    train, val = source.batches(hp.micro_batch, dist["device"], dist["rank"], dist["world"])
    torch.manual_seed(args.seed)
    model = GPT(config).to(dist["device"])
    ckpt.start_run(out, args, "ppt", dist)
    extra = {"vocab": {"kind": source.kind, "size": vocab}, "nca": source.info}
    return Stage(args, "ppt", out, model, train, val, hp, memory, ctx, dist, extra,
                 scores=source.scores).run()


def run_lang(args, out, ctx, dist):
    data_dir = flags.lang_data(args)
    vocab = flags.lang_vocab(args, data_dir)
    torch.manual_seed(args.seed)
    model = lang_model(args, vocab, dist["device"])
    hp = flags.stage_config(args, "lang")
    hp.micro_batch, memory = plan_micro_batch(args, "lang", hp, model, dist)
    hp.tokens = hp.tokens or len(load_tokens(data_dir, "train")) // hp.batch_tokens \
        * hp.batch_tokens
    train = TextBatches(data_dir, "train", args.seq_len, hp.micro_batch, dist["device"],
                        args.seed, dist["rank"])
    val = text_val_batches(data_dir, args.seq_len, args.eval_tokens, hp.micro_batch,
                           dist["device"])
    ckpt.start_run(out, args, "lang", dist)
    extra = {"vocab": {"kind": load_meta(data_dir).get("tokenizer", "gpt2"), "size": vocab}}
    return Stage(args, "lang", out, model, train, val, hp, memory, ctx, dist, extra,
                 probe=probe_vocab(extra["vocab"])).run()


def lang_model(args, vocab_size, device):
    """The stage-2 model (docs/method.md, 'Transfer'): the body of --init_from, or the scratch
    baseline's fresh body. Both get the same freshly initialized embeddings and head
    (reset_vocab, drawn right after re-seeding with --seed), so the arms of a seed differ only in
    the body; the data order and dropout stream that follow are the same too."""
    if args.init_from:                                      # built on the CPU, then moved
        model = ckpt.build_model(ckpt.load(args.init_from), "cpu", block_size=args.seq_len,
                                 attn_dropout=args.attn_dropout)   # RoPE: no learned positions
    else:
        model = GPT(flags.model_config(args, vocab_size, head_bias=False))
    torch.manual_seed(args.seed)             # whatever the body's initialization consumed
    if not args.keep_embeddings:
        model.reset_vocab(vocab_size, args.embed_init)
    elif model.config.head_bias:                            # language heads have no bias
        model.lm_head.bias, model.config.head_bias = None, False
    for kind in flags.kinds(args.reinit):
        model.reinit_modules(kind, flags.layer_range(args.reinit_layers, model.config.n_layer))
    for kind in flags.kinds(args.freeze):
        model.freeze_modules(kind, flags.layer_range(args.freeze_layers, model.config.n_layer))
    return model.to(device)


# -----------------------------------------------------------------------------------------------
# The training loop, shared by both stages

class Stage:
    """One stage of training. Read run() first: validate and checkpoint on schedule, then one
    optimizer step (gradient accumulation over micro-batches), then a log line."""

    def __init__(self, args, stage, out, model, train_iter, val, hp, memory, ctx, dist, extra,
                 scores=None, probe=None):
        self.args, self.stage, self.out, self.raw, self.train_iter = args, stage, out, model, \
            train_iter
        self.val, self.hp, self.memory, self.ctx, self.extra = val, hp, memory, ctx, extra
        self.scores, self.probe = scores, probe
        self.rank, self.world, self.device = dist["rank"], dist["world"], dist["device"]
        self.master = self.rank == 0
        self.accum = hp.batch_tokens // (hp.micro_batch * args.seq_len * self.world)
        steps = hp.tokens // hp.batch_tokens      # at least 1: flags.check_batch
        self.steps = min(steps, args.max_iters) if args.max_iters else steps
        self.cuda = str(self.device).startswith("cuda")
        self.optimizer = model.configure_optimizers(hp.weight_decay, hp.lr, (0.9, 0.999), 1e-8,
                                                    "cuda" if self.cuda else "cpu",
                                                    decay_all=hp.decay_all)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.scaler = torch.amp.GradScaler("cuda" if self.cuda else "cpu",
                                           enabled=(args.dtype == "float16"))
        self.wrap_model()
        self.metrics_path = out / "metrics.jsonl"
        self.first_batch_hash, self.rates = None, []

    def wrap_model(self):
        """DDP first, then compile: the compiled graph is split at DDP's gradient buckets, so
        their all-reduce overlaps the backward pass (a compiled model inside DDP is one opaque
        backward). Validation runs the compiled model without DDP."""
        self.model = self.ddp = self.eval_model = self.raw
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.model = self.ddp = DDP(self.raw, device_ids=[self.device] if self.cuda else None,
                                        gradient_as_bucket_view=True)
        if self.args.compile:
            torch.compiler.reset()  # after stage 1, stage 2's shapes would compile as dynamic
            self.model = torch.compile(self.model)
            self.eval_model = torch.compile(self.raw) if self.world > 1 else self.model

    def run(self):
        """Returns the final validation metrics."""
        step = self.resume()                  # None for a fresh run
        resumed, step = step is not None, step or 0
        resumed_at, last_val = step, None
        if self.world > 1:   # the init above is the same on every rank; dropout masks must differ
            seed = np.random.SeedSequence([self.args.seed, step, self.rank]).generate_state(1)[0]
            torch.manual_seed(int(seed))
        self.rng_at_start = float(torch.get_rng_state().double().sum())
        self.announce(step)
        self.bar = progress_bar(self.steps, self.stage, unit="step", disable=not self.master,
                                initial=step, dynamic_ncols=True)
        ckpt_every = self.hp.ckpt_interval or self.hp.eval_interval
        self.t_last, self.last_logged, self.paused = time.perf_counter(), step, 0.0
        self.model.train()
        while True:
            t_pause = time.perf_counter()
            due = step % self.hp.eval_interval == 0 or step == self.steps
            if due and not (resumed and step == resumed_at):       # validated before the stop
                last_val = self.validate(step)
            if (step % ckpt_every == 0 or step == self.steps) and not (step == resumed_at > 0):
                self.checkpoint(step)
            self.paused += time.perf_counter() - t_pause  # not part of the throughput windows
            if step == self.steps:
                break
            step += 1
            self.train_step(step, resumed_at)
        self.bar.close()
        self.finish()
        return last_val

    def resume(self):
        """With --resume and a checkpoint in the folder, restore the model, optimizer, data
        position and random state; returns the step to continue from (None: a fresh run)."""
        path = self.out / "ckpt.pt"
        if not (self.args.resume and path.exists()):
            if self.args.resume and self.master:
                print(f"--resume: no checkpoint in {self.out}, starting {self.stage} from scratch")
            return None
        ck = ckpt.load(path, self.device)
        if ck["step"] > self.steps:
            raise UserError(f"--resume: {path} is at step {ck['step']}, past the {self.steps} "
                            "steps of this command: resume with the budget in config.json")
        self.raw.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.train_iter.load_state_dict(ck["data"])
        torch.set_rng_state(ck["rng"]["torch"].cpu())
        if self.cuda and ck["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ck["rng"]["cuda"].cpu())
        if self.master:                               # the checkpoint loaded: now it is this run
            ckpt.write_config(self.out, vars(self.args) | {"stage": self.stage})
            ckpt.truncate_metrics(self.metrics_path, ck["step"])
            print(f"resumed {self.stage} at step {ck['step']}")
        return ck["step"]

    def announce(self, step):
        self.flops, self.peak = self.raw.flops_per_token(self.args.seq_len), peak_flops(self.device)
        hp, cfg = self.hp, self.raw.config
        if self.master:
            print(f"{self.stage}: {self.steps} steps of {hp.batch_tokens:,} tokens ({self.accum} "
                  f"micro-steps of {hp.micro_batch} x {self.args.seq_len} x {self.world} "
                  f"processes), {self.raw.num_params():,} body parameters, vocabulary "
                  f"{cfg.vocab_size:,}"
                  + (f"; MFU against {self.peak / 1e12:.0f} TFLOP/s" if self.peak else ""))
        if step == 0:
            self.log({"kind": "info", "step": 0, "tokens": 0, "micro_batch": hp.micro_batch,
                      "accum": self.accum, "world": self.world,
                      "mem_estimate_gb": self.memory["total"] / 2**30})

    def log(self, rec):
        if self.master:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def validate(self, step):
        """Validation loss (and the source's own metrics: NCA accuracy beside the copy baseline;
        in stage 2 the copy probe), logged and returned."""
        scores = self.scores() if self.scores else None
        val = {"val_loss": evaluate(self.eval_model, self.val, self.ctx, each=scores)["loss"]}
        val |= scores.result() if scores else {}
        if self.probe:
            p = copy_probe(self.raw, self.probe, self.args.seq_len // 2,
                           batch_size=self.hp.micro_batch, device=self.device, ctx=self.ctx)
            val |= {f"probe_{k}": v for k, v in p.items()}
        rec = {"kind": "val", "step": step, "tokens": step * self.hp.batch_tokens, **val}
        self.log(rec)
        if self.master:
            self.bar.write(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                    for k, v in rec.items()))
        if not math.isfinite(val["val_loss"]):
            self.bar.close()
            raise UserError(f"validation loss is {val['val_loss']} at step {step} of "
                            f"{self.stage}: lower the learning rate or use --dtype float32")
        return val

    def checkpoint(self, step):
        if not self.master:
            return
        ckpt.save({"model": self.raw.state_dict(), "optimizer": self.optimizer.state_dict(),
                   "model_args": asdict(self.raw.config), "step": step,
                   "tokens": step * self.hp.batch_tokens,
                   "config": vars(self.args) | {"stage": self.stage}, "stage": self.stage,
                   "vocab": self.extra["vocab"], "nca": self.extra.get("nca"),
                   "data": self.train_iter.state_dict(),
                   "rng": {"torch": torch.get_rng_state(),
                           "cuda": torch.cuda.get_rng_state(self.device) if self.cuda else None}},
                  self.out / "ckpt.pt")

    def train_step(self, step, resumed_at):
        """One optimizer step to `step` (micro-batches accumulated, gradients synced on the
        last), and a log line every --log_interval steps."""
        lr = lr_at(step - 1, self.steps, self.hp.lr, self.hp.warmup_frac, self.hp.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        log_now = step % self.args.log_interval == 0 or step == self.steps
        for micro_step in range(self.accum):
            x, y = next(self.train_iter)
            if self.first_batch_hash is None:
                self.first_batch_hash = int(x.long().sum()) * 1_000_003 + int((x[:, :8] * 31).sum())
            sync = contextlib.nullcontext() if self.world == 1 or micro_step == self.accum - 1 \
                else self.ddp.no_sync()
            with sync, self.ctx:
                _, loss = self.model(x, y)
                loss = loss / self.accum
            self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
        self.scaler.unscale_(self.optimizer)
        norm = None
        if self.hp.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.hp.grad_clip)
        elif log_now:                           # no clipping: the norm only for the log line
            norm = torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(p.grad) for p in self.params if p.grad is not None]))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.bar.update(1)
        if log_now:
            self.log_train(step, resumed_at, loss_sum, lr, float(norm))

    def log_train(self, step, resumed_at, loss_sum, lr, norm):
        if self.world > 1:
            torch.distributed.all_reduce(loss_sum, op=torch.distributed.ReduceOp.AVG)
        loss = loss_sum.item()                                   # syncs the device
        now = time.perf_counter()
        dt = (now - self.t_last - self.paused) / (step - self.last_logged)
        self.t_last, self.last_logged, self.paused = now, step, 0.0
        mem = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.cuda else None
        tok_s = self.hp.batch_tokens / dt
        mfu = self.flops * tok_s / self.world / self.peak if self.peak else None
        if step > resumed_at + 2 * self.args.log_interval:      # skip warm-up / compile steps
            self.rates.append(tok_s)
        if not math.isfinite(loss):
            self.bar.close()
            raise UserError(f"loss is {loss} at step {step} of {self.stage}: lower the "
                            "learning rate, clip gradients, or use --dtype float32")
        self.log({"kind": "train", "step": step, "tokens": step * self.hp.batch_tokens,
                  "loss": loss, "lr": lr, "grad_norm": norm, "ms": dt * 1000, "tok_s": tok_s,
                  "mfu": mfu, "mem_gb": mem})
        if self.master:
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}")
            self.bar.write(f"step {step} loss {loss:.4f} lr {lr:.2e} grad_norm {norm:.3f} "
                           f"{dt * 1000:.0f} ms {tok_s:,.0f} tok/s"
                           + (f" mfu {100 * mfu:.1f}%" if mfu is not None else "")
                           + (f" peak memory {mem:.1f} GiB" if mem is not None else ""))

    def finish(self):
        if self.master and self.rates:
            print(f"{self.stage}: mean {np.mean(self.rates):,.0f} tok/s after warm-up")
        if self.args.debug_ranks:
            wsum = sum(float(p.detach().double().sum()) for p in self.raw.parameters())
            (self.out / f"rank{self.rank}.json").write_text(json.dumps(
                {"rank": self.rank, "first_batch": self.first_batch_hash, "weights": wsum,
                 "dropout_rng": self.rng_at_start, "micro_batch": self.hp.micro_batch,
                 "accum": self.accum}))


def lr_at(step, steps, peak, warmup_frac, schedule):
    """Linear warmup from 0 (the official LambdaLR: the first update uses lr 0), then constant
    or cosine to 0 at the last step."""
    warmup = int(warmup_frac * steps)
    if step < warmup:
        return peak * step / warmup
    if schedule == "constant" or steps <= warmup:
        return peak
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))


# -----------------------------------------------------------------------------------------------
# Devices and memory

def peak_flops(device):
    if not str(device).startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS if k in name), None)


def device_memory(device, world):
    """Bytes of memory one process may use: the GPU's, or the machine's RAM over the processes."""
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // world
    except (AttributeError, ValueError, OSError):           # no sysconf (Windows): assume 16 GiB
        return 16 * 2**30 // world


def plan_micro_batch(args, stage, hp, model, dist):
    """The micro-batch (sequences per forward pass) and its memory estimate: hp.micro_batch, or
    for 0 the largest that divides each process's share of the batch and whose estimate
    (GPT.memory_estimate) fits in 90% of the memory less 2 GiB (CUDA context, workspaces,
    allocator fragmentation)."""
    T, world = args.seq_len, dist["world"]
    seqs = hp.batch_tokens // (T * world)                   # sequences per process and step
    act = 4 if args.dtype == "float32" else 2
    memory = args.memory_gb * 2**30 if args.memory_gb else device_memory(dist["device"], world)
    usable = 0.9 * memory - 2 * 2**30
    micro = hp.micro_batch
    if micro == 0:
        fits = [m for m in range(1, seqs + 1)
                if seqs % m == 0 and model.memory_estimate(m, T, act)["total"] <= usable]
        if not fits:
            need = model.memory_estimate(1, T, act)["total"]
            raise UserError(f"{stage}: one sequence of {T} tokens needs about {need / 2**30:.1f} "
                            f"GiB by the estimate, more than the {max(usable, 0) / 2**30:.1f} "
                            f"GiB usable of {memory / 2**30:.1f} GiB: use a smaller --size or "
                            "--seq_len (or set --memory_gb)")
        micro = fits[-1]
    elif seqs % micro:
        raise UserError(f"--{flags.stage_flag(stage, 'micro_batch')} {micro} does not divide "
                        f"the {seqs} sequences of {T} tokens each of the {world} processes gets "
                        f"per step: use a divisor of {seqs}, or 0 to choose one")
    est = model.memory_estimate(micro, T, act)
    if dist["rank"] == 0:
        parts = ", ".join(f"{k} {v / 2**30:.2f}" for k, v in est.items() if k != "total")
        print(f"{stage}: micro-batch {micro} x {T} tokens, {seqs // micro} accumulation "
              f"steps x {world} processes; memory estimate {est['total'] / 2**30:.1f} GiB of "
              f"{usable / 2**30:.1f} GiB usable per process (GiB: {parts})")
    return micro, est


def setup_distributed(args, rank, world):
    device = default_device(args.device)
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device.startswith("cuda"):
            device = f"cuda:{local}"
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend="nccl" if device.startswith("cuda")
                                             else "gloo")
    return {"rank": rank, "world": world, "device": device}


if __name__ == "__main__":
    main()
