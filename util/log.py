"""The training log: one line per log step (loss, lr, grad norm, ms, tok/s, MFU against a
per-device peak, peak memory), the same numbers in metrics.jsonl and, optionally, in Weights &
Biases; and the provenance of every result (commit, torch, device, command)."""
import contextlib
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

import util
from util import UserError, progress_bar, show, skip_time, write_failure

# Dense bf16 peak per GPU; the first name found in the device's name wins. The PCIe and NVL cards
# run slower clocks (and the PCIe H100 fewer SMs) than the SXM parts of the same name.
PEAK_FLOPS = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200 NVL", 835e12), ("GH200", 989e12),
              ("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
              ("4090", 165e12), ("A10", 125e12)]


def peak_flops(device):
    if not str(device).startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS if k in name), None)


def compiled_graphs():
    """Graphs torch.compile has built in this process so far (all stages), or None when nothing
    was compiled: a number that grows between two log lines of a run means a recompile."""
    dynamo = sys.modules.get("torch._dynamo.utils")        # not imported: nothing was compiled
    return int(dynamo.counters["stats"]["unique_graphs"]) if dynamo else None


def matmul_rate(device, n=1024, seconds=0.3):
    """FLOP/s of float32 n x n matmuls on `device`, measured for about `seconds`."""
    a = torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else lambda: None
    a @ a
    sync()
    t0, k = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        a @ a
        sync()
        k += 1
    return 2 * n ** 3 * k / (time.perf_counter() - t0)



# Dead training: this many consecutive log lines with a gradient norm of exactly 0, or a loss
# within DEAD_TOL nats of ln(vocabulary) (the uniform guess; a fresh model starts about 0.15
# above it and a learning one leaves it within steps), stop the run.
DEAD_LINES, DEAD_TOL = 5, 1e-3


class Log:
    """metrics.jsonl and the console. Throughput is measured over the steps since the last line,
    with validation and checkpoint time (`paused`) left out. It also follows the run for the two
    ways it can end early: Ctrl-C (the step reached and the last one saved, `saved`, for the
    line util.cli prints) and dead training (`healthy` is False from the first dead-looking
    line on, so that no dead checkpoint replaces the last good one)."""

    def __init__(self, stage, path, master, model, seq_len, device, world, step, track=None):
        self.stage, self.path, self.master, self.model = stage, path, master, model
        self.flops, self.peak = model.flops_per_token(seq_len), peak_flops(device)
        self.seq_len, self.device, self.world = seq_len, device, world
        self.t_last, self.last_step, self.paused = time.perf_counter(), step, 0.0
        self.bar, self.step, self.saved, self.dead = None, step, step or None, 0
        # wandb.init's arguments (tracking()): every line written below also goes there
        self.run = start_tracking(track) if track and master else None

    @property
    def healthy(self):
        return self.dead == 0

    def tick(self, step):
        """One optimizer step done."""
        self.step = step
        self.bar.update(1)

    def interrupted(self):
        """The line Ctrl-C ends the run with (util.cli prints it)."""
        then = f"--resume continues from step {self.saved}" if self.saved is not None else \
            "no checkpoint yet: --resume starts it again"
        return f"interrupted at step {self.step} of {self.stage}; {then}"

    def write(self, rec):
        if self.master:
            try:
                with open(self.path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            except OSError as e:     # a half line at the end is dropped by --resume
                raise write_failure(self.path, e) from None
        if self.run is None:
            return
        numbers = {k: v for k, v in rec.items() if k not in ("step", "kind")
                   and isinstance(v, (int, float))}
        if rec["kind"] == "info":         # run-level constants: the run's config, not charts
            self.run.config.update({k: v for k, v in numbers.items() if k != "tokens"},
                                   allow_val_change=True)
        else:
            self.run.log({wandb_key(rec["kind"], k): v for k, v in numbers.items()},
                         step=rec["step"])

    def close(self):
        self.bar.close()
        if self.run is not None:
            self.run.finish()
            self.run = None

    def start(self, steps, hp, accum, memory):
        m = self.model
        util.interrupt_line = self.interrupted
        if self.master:
            print(f"{self.stage}: {steps} steps of {hp.batch_tokens:,} tokens ({accum} "
                  f"micro-step{'s' * (accum > 1)} of {hp.micro_batch} x {self.seq_len} x "
                  f"{self.world} process{'es' * (self.world > 1)}), "
                  f"{m.num_params():,} body parameters, vocabulary {m.config.vocab_size:,}"
                  + (f"; MFU against {self.peak / 1e12:.0f} TFLOP/s" if self.peak else ""))
        if self.last_step == 0:
            self.write({"kind": "info", "step": 0, "tokens": 0, "micro_batch": hp.micro_batch,
                        "accum": accum, "world": self.world,
                        "mem_estimate_gb": memory["total"] / 2**30})
        self.bar = progress_bar(steps, self.stage, unit="step", disable=not self.master,
                                initial=self.last_step, dynamic_ncols=True)

    @contextlib.contextmanager
    def pause(self, step, validating):
        """Validation and checkpoints: left out of the throughput and of the bar's rate and ETA;
        while validation and the probes run, the bar says so."""
        t0 = time.perf_counter()
        if validating and self.master:
            self.bar.set_description_str(f"{self.stage}: validating at step {step}", refresh=True)
        try:
            yield
        finally:
            if validating and self.master:
                self.bar.set_description_str(self.stage, refresh=False)
            self.paused += time.perf_counter() - t0
            skip_time(self.bar, time.perf_counter() - t0)

    def val_line(self, step, tokens, res):
        rec = {"kind": "val", "step": step, "tokens": tokens, **res}
        self.write(rec)
        if self.master:                     # "step N val_loss ...", like the training lines
            self.bar.write(console_line(f"step {step}", res))
        self.finite(res["val_loss"], "validation loss", step, "lower the learning rate or use "
                    "--dtype float32")

    def train_line(self, step, loss_sum, lr, norm, batch_tokens):
        if self.world > 1:
            torch.distributed.all_reduce(loss_sum, op=torch.distributed.ReduceOp.AVG)
        loss = loss_sum.item()                                   # syncs the device
        now = time.perf_counter()
        dt = (now - self.t_last - self.paused) / (step - self.last_step)
        self.t_last, self.last_step, self.paused = now, step, 0.0
        cuda = self.device.startswith("cuda")
        mem = torch.cuda.max_memory_allocated(self.device) / 2**30 if cuda else None
        tok_s = batch_tokens / dt
        mfu = self.flops * tok_s / self.world / self.peak if self.peak else None
        self.finite(loss, "loss", step, "lower the learning rate, clip gradients, or use --dtype "
                    "float32")
        self.check_alive(step, loss, norm)
        self.write({"kind": "train", "step": step, "tokens": step * batch_tokens, "loss": loss,
                    "lr": lr, "grad_norm": norm, "ms": dt * 1000, "tok_s": tok_s, "mfu": mfu,
                    "mem_gb": mem, "graphs": compiled_graphs()})
        if self.master:
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}")
            self.bar.write(f"step {step} loss {loss:.4f} lr {lr:.2e} grad_norm {norm:.3f} "
                           f"{dt * 1000:.0f} ms {tok_s:,.0f} tok/s"
                           + (f" mfu {100 * mfu:.1f}%" if mfu is not None else "")
                           + (f" peak memory {mem:.1f} GiB" if mem is not None else ""))
        return tok_s

    def check_alive(self, step, loss, norm):
        """Stop a run that no longer learns: the gradient norm exactly 0, or the loss at the
        uniform level ln(V), over DEAD_LINES consecutive log lines (a huge learning rate without
        clipping gets there without ever producing a NaN, then spends its whole budget)."""
        uniform = math.log(self.model.config.vocab_size)
        self.dead = self.dead + 1 if norm == 0 or abs(loss - uniform) < DEAD_TOL else 0
        if self.dead < DEAD_LINES:
            return
        self.bar.close()
        kept = f"{show(self.path.parent / 'ckpt.pt')} keeps step {self.saved}, the last " \
            "checkpoint before these lines" if self.saved is not None else "no checkpoint was kept"
        raise UserError(f"training of {self.stage} is dead at step {step}: over the last "
                        f"{DEAD_LINES} log lines the gradient norm was 0 or the loss sat at "
                        f"ln({self.model.config.vocab_size:,}) = {uniform:.3f}, the uniform guess; "
                        f"{kept}: lower the learning rate or clip gradients (--grad_clip)")

    def finite(self, value, what, step, fix):
        """A NaN or infinite loss ends the run with one line (the last checkpoint stays)."""
        if not math.isfinite(value):
            self.close()
            raise UserError(f"{what} is {value} at step {step} of {self.stage}: {fix}")


CONSOLE_WIDTH = 120      # a validation line fits a terminal this wide; metrics.jsonl has all


def console_line(head, res, width=CONSOLE_WIDTH):
    """`head` and the key numbers of a validation record: the scalars, without their standard
    errors and the two sides of each copy probe (their gain stays), as many as fit in `width`
    columns, then "…" when some were left out (every one is in metrics.jsonl)."""
    line = head
    keys = [k for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and not k.endswith(("_se", "_first", "_second"))]
    for i, k in enumerate(keys):
        v = res[k]
        item = f" {k} {v:.4f}" if isinstance(v, float) else f" {k} {v}"
        room = width - (2 if i < len(keys) - 1 else 0)        # for " …" if more follow
        if len(line) + len(item) > room:
            return line + " …"
        line += item
    return line


def plain_json(obj):
    """`obj` with every value JSON cannot hold (a Path, a dtype) as its text."""
    if isinstance(obj, dict):
        return {str(k): plain_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_json(v) for v in obj]
    for kind in (bool, int, float):             # (a str subclass, e.g. torch.__version__,
        if isinstance(obj, kind):               # becomes a plain str below)
            return kind(obj)
    return None if obj is None else str(obj)


def wandb_module():
    """wandb, imported only when asked for (it is optional). Any failure of the import (a
    broken install raises more than ImportError) is one line."""
    try:
        import wandb
    except ImportError:
        raise UserError("--wandb_project needs wandb, which is optional: pip install wandb "
                        "(or drop --wandb_project)") from None
    except Exception as e:                                   # noqa: BLE001 (any failure)
        why = (str(e).strip().splitlines() or [""])[0]
        raise UserError(f"--wandb_project: importing wandb failed ({type(e).__name__}: {why}): "
                        "reinstall it (pip install -U wandb) or drop --wandb_project") from None
    return wandb


def wandb_ready():
    """wandb for --wandb_project, checked before a run folder exists: importable and logged in
    (wandb_logged_in), else one line."""
    wandb = wandb_module()
    if not wandb_logged_in(wandb):
        raise UserError("--wandb_project: wandb is not logged in here: run `wandb login` "
                        "(or set WANDB_API_KEY; WANDB_MODE=offline logs locally), or drop "
                        "--wandb_project")
    return wandb


def wandb_logged_in(wandb):
    """Whether wandb can log without asking: offline or disabled (WANDB_MODE), an API key in
    the environment, or one stored by `wandb login` (read locally: no network)."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun") or \
            os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return bool(wandb.api.api_key)
    except Exception:                                        # noqa: BLE001 (a broken install)
        return False


def start_tracking(track):
    """wandb.init(**track); its failure (guard.py checked the import and the login, so the
    network or the server) is one line."""
    try:
        return wandb_module().init(**track)
    except Exception as e:                                   # noqa: BLE001 (wandb's own errors)
        why = (str(e).strip().splitlines() or [""])[0]
        raise UserError(f"--wandb_project: wandb.init failed ({type(e).__name__}: {why}): the "
                        f"run folder {track['dir']} holds only config.json; retry with --resume, "
                        "or drop --wandb_project") from None


def wandb_key(kind, name):
    """A metrics.jsonl value's name in wandb: train/loss, val/loss (val_loss), val/icl_score;
    stage 1 and stage 2 are apart as two wandb runs (tracking())."""
    if kind == "val" and name.startswith("val_"):
        name = name[4:]
    return f"{kind}/{name}"


def tracking(cfg, stage, out):
    """wandb.init's arguments for one stage of a run (None without --wandb_project): one wandb
    run per stage folder, grouped by the train.py command, its config the stage's flags."""
    if not cfg.wandb_project:
        return None
    both = cfg.stage == "both"
    name = cfg.wandb_run and (f"{cfg.wandb_run}-{stage}" if both else cfg.wandb_run)
    return {"project": cfg.wandb_project, "name": name, "group": cfg.wandb_run or Path(
        cfg.out_dir).name, "job_type": stage, "dir": str(out),
            "config": plain_json(vars(cfg) | {"stage": stage})}


def provenance(script, argv, device):
    """Where a result comes from (config.json, eval.json, eval.md): the git commit, whether the
    working tree differs from it, the PyTorch version, the device and the command line."""
    def git(*args):
        try:
            r = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), *args],
                               capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):        # no git, or it hangs
            return None
        return r.stdout.strip() if r.returncode == 0 else None
    commit = git("rev-parse", "HEAD")
    argv = sys.argv[1:] if argv is None else argv
    return {"git_commit": commit, "git_dirty": bool(git("status", "--porcelain")) if commit
            else None, "torch": torch.__version__, "device": device_name(device),
            "command": shlex.join(["python", script, *map(str, argv)])}


def device_name(device):
    device = str(device)
    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device == "cpu":
        try:
            model = next(line.split(":", 1)[1].strip() for line in
                         Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name"))
        except (OSError, StopIteration):
            model = platform.machine() or platform.processor()
        return f"cpu ({model})" if model else "cpu"
    return device


def provenance_line(p):
    """The eval.md footer."""
    commit = "not a git checkout" if p["git_commit"] is None else \
        f"git {p['git_commit'][:12]}" + (" (dirty: the working tree differs)" if p["git_dirty"]
                                          else "")
    return f"{commit} · torch {p['torch']} · {p['device']} · `{p['command']}`"
