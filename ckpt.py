"""Checkpoints and run folders.

A run folder (train.py --out_dir) holds config.json (the flags), metrics.jsonl (one JSON line per
log or validation step) and ckpt.pt, a dict of tensors and plain values that loads with
torch.load(weights_only=True): model, model_args (GPTConfig fields), optimizer, step, tokens,
config, stage ("ppt" or "lang"), vocab ({"kind": nca | dyck | gpt2 | bytes, "size"}), nca (the
generator settings and held-out rules of an NCA stage 1), data (the batch stream's position) and
rng. Every file is written to a temporary name and renamed; a running train.py owns its folder
through <out_dir>/.lock.
"""
import json
import os
import socket
import sys
import time
from pathlib import Path

import torch

from model import GPT, GPTConfig
from util import UserError, atomic_write

RUN_FILES = ("config.json", "metrics.jsonl", "ckpt.pt")


def save(obj, path):
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load(path, device="cpu", mmap=False):
    """A checkpoint dict, tensors only (weights_only); mmap=True reads nothing until it is used."""
    if not Path(path).is_file():
        raise UserError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except Exception as e:  # truncated file, not a checkpoint, unsafe pickle: one line, no trace
        raise UserError(f"cannot read checkpoint {path}: "
                        f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None


def peek(path, what="checkpoint", need=("model", "model_args")):
    """A train.py checkpoint, memory-mapped on the CPU (cheap), checked to hold `need` and a
    usable model_args."""
    ck = load(path, "cpu", mmap=True)
    missing = [k for k in need if k not in ck] if isinstance(ck, dict) else ["model"]
    if missing:
        raise UserError(f"{what} {path} is not a train.py checkpoint (no {missing[0]})")
    try:
        GPTConfig(**ck["model_args"])
    except (TypeError, ValueError) as e:
        raise UserError(f"{what} {path} has unusable model_args: {e}") from None
    return ck


def build_model(ck, device="cpu", **overrides):
    """The GPT of a checkpoint on `device` (in train mode); `overrides` change config fields that
    hold no weights (block_size: RoPE has no learned positions; attn_dropout)."""
    with torch.device("meta"):
        model = GPT(GPTConfig(**{**ck["model_args"], **overrides}))
    model.to_empty(device=device)
    model.init_weights()  # for the RoPE tables, which no checkpoint holds; weights come next
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise UserError(f"the checkpoint's weights do not fit its model_args: "
                        f"{str(e).strip().splitlines()[0]}") from None
    return model


# -----------------------------------------------------------------------------------------------
# Run folders

def check_run_dir(out, resume, overwrite):
    """Refuse to clobber a run unless --overwrite (or continue it with --resume)."""
    if Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"--out_dir {out} is a file, not a folder: choose another --out_dir")
    existing = [f for f in RUN_FILES if (Path(out) / f).exists()]
    if existing and not (resume or overwrite):
        raise UserError(f"{out} already holds a run ({', '.join(existing)}): pass --resume to "
                        "continue it or --overwrite to replace it (or choose another --out_dir)")


def prepare_run_dir(out, config, resume, overwrite):
    """Create the run folder; with --overwrite clear the old run; write config.json unless a
    checkpoint is to be resumed (it is rewritten once that checkpoint has loaded)."""
    out = Path(out)
    check_run_dir(out, resume, overwrite)
    if overwrite and not resume:
        for f in RUN_FILES:
            (out / f).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if resume and (out / "ckpt.pt").exists():
        return
    if resume:                            # lines of an attempt that left no checkpoint
        (out / "metrics.jsonl").unlink(missing_ok=True)
    write_config(out, config)


def write_config(out, config):
    atomic_write(Path(out) / "config.json", json.dumps(config, indent=2, default=str))


def truncate_metrics(path, step):
    """Drop the metrics.jsonl lines written after `step` (the checkpoint a run resumes from)."""
    if Path(path).exists():
        lines = Path(path).read_text().splitlines()
        if lines and not lines[-1].endswith("}"):      # half a line, written as the run was killed
            lines.pop()
        keep = [l for l in lines if l and json.loads(l)["step"] <= step]
        atomic_write(path, "".join(l + "\n" for l in keep))


def lock_run_dir(out):
    """Own a run folder for the life of the run: out/.lock, created exclusively, holds our pid
    and host. A lock left by a process that no longer runs (same host) is stale and taken over;
    a live one refuses this run, whatever --overwrite says. Returns (lock path, created out)."""
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path, host = out / ".lock", socket.gethostname()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid, _, owner = path.read_text().strip().partition(" ")
                pid = int(pid)
            except (OSError, ValueError):     # vanished or half-written: look again
                time.sleep(0.1)
                continue
            if owner == host and not _alive(pid):
                print(f"note: {path} was left by process {pid}, which is no longer running: "
                      "taking the folder over", file=sys.stderr)
                path.unlink(missing_ok=True)
                continue
            raise UserError(f"{out} is in use by process {pid} on {owner} ({path}): wait for it "
                            "to finish or choose another --out_dir (if that process is gone, "
                            "delete the lock file)")
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {host}\n")
        return path, created
    raise UserError(f"could not lock {out}: {path} keeps changing (another run starting?)")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:               # exists, owned by another user
        return True
    return True


def unlock_run_dir(path, created):
    """Remove our lock, and the folder if this run created it and left nothing in it."""
    try:
        if path.read_text().split()[0] == str(os.getpid()):
            path.unlink()
        if created:
            path.parent.rmdir()
    except OSError:
        pass


def own_run_dirs(run_dirs, args, dist, locks):
    """Check that the run folders may be written, and (rank 0) lock them for the life of the
    run, appending to `locks`; every rank stops if rank 0 must."""
    for d in run_dirs:
        check_run_dir(d, args.resume, args.overwrite)           # before anything is trained
    refusal = None
    if dist["rank"] == 0:
        try:
            for d in sorted(set(run_dirs), key=lambda d: len(d.parts)):
                locks.append(lock_run_dir(d))
            for d in run_dirs:                 # again, now that no one else can write
                check_run_dir(d, args.resume, args.overwrite)
        except UserError as e:
            refusal = e
    if not _all_ok(dist, refusal is None):
        raise refusal or UserError(f"rank 0 could not take {args.out_dir}")


def start_run(out, args, stage, dist):
    """Create the run folder once everything it needs has been checked (data, checkpoint)."""
    if dist["rank"] == 0:
        prepare_run_dir(out, vars(args) | {"stage": stage}, args.resume, args.overwrite)
    if dist["world"] > 1:
        torch.distributed.barrier()


def _all_ok(dist, ok):
    """False on every rank when `ok` is False on any (so a refusal on rank 0 stops them all)."""
    if dist["world"] == 1:
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device=dist["device"])
    torch.distributed.all_reduce(flag)
    return flag.item() == 0
