"""Small helpers shared by the scripts: knobs as dataclass fields turned into flags, the one
error class and the one place it becomes an "error:" line, atomic file writes, the --device and
--dtype choices, and progress bars that stay readable in log files."""
import argparse
import atexit
import contextlib
import errno
import functools
import json
import os
import re
import shutil
import sys
import textwrap
import time
import types
import typing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import field, fields
from pathlib import Path

# The one refusal that cannot wait for guard.py: every module imports this one before it defines
# anything written for Python 3.10 (`int | None` fields): an older Python stops here, in one line.
if sys.version_info < (3, 10):
    print("error: Python 3.10 or newer is needed, this is Python "
          f"{sys.version_info[0]}.{sys.version_info[1]}", file=sys.stderr)
    raise SystemExit(2)

import torch  # noqa: E402


class UserError(ValueError):
    """A problem the user can fix (a flag, a path, a file); the scripts print it as one line
    starting with "error:" and exit with status 2, without a traceback."""


def cli(main):
    """The one place a UserError becomes what the user sees: one line starting with "error:"
    on stderr and exit status 2, without a traceback. Every script's main() is wrapped in it. A
    write that fails outside atomic_write (an append to metrics.jsonl, a mkdir) is one such line
    too, and Ctrl-C is one line (what a running stage reports: interrupt_line) and status 130."""
    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        global interrupt_line
        try:
            return main(*args, **kwargs)
        except (UserError, torch.cuda.OutOfMemoryError, OSError) as e:
            if isinstance(e, OSError) and e.errno not in PLAIN_ERRNO:
                raise                                    # not the user's to fix: a bug
            if isinstance(e, torch.cuda.OutOfMemoryError):
                e = ("out of GPU memory: pass a smaller --micro_batch / --ppt_micro_batch (or a "
                     "smaller --memory_gb for the automatic choice)")
            elif isinstance(e, OSError):
                e = (f"{shown(e.filename)}: " if e.filename else "") + os_reason(e)
            print(rank_prefix() + f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print(rank_prefix() + interrupt_line(), file=sys.stderr)
            raise SystemExit(130) from None
        finally:
            interrupt_line = _interrupted
    return wrapped


def rank_prefix():
    return f"[rank {os.environ.get('RANK', '0')}] " \
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""


def _interrupted():
    return "interrupted (every file is written whole or not at all)"


# The line Ctrl-C prints; a training stage replaces it with one that knows its steps (Log, below).
interrupt_line = _interrupted


# -----------------------------------------------------------------------------------------------
# Writing files: outputs checked before the work, atomic writes, failures in plain words

PLAIN_ERRNO = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
               errno.EFBIG: "file too large (a file-size limit: see ulimit -f)",
               errno.EROFS: "the file system is read-only",
               errno.EACCES: "permission denied (a read-only folder?)",
               errno.EPERM: "permission denied (a read-only folder?)",
               errno.ENOTDIR: "a part of the path is a file, not a folder",
               errno.EEXIST: "a part of the path is a file, not a folder",   # from mkdir
               errno.EISDIR: "it is a folder, not a file"}
TEMPORARY = re.compile(r"^(?P<stem>.+)\.(?P<pid>\d+)\.tmp(?P<suffix>\.[^.]*)?$")


def show(path):
    """A path as the user would type it: relative to the working directory when inside it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def shown(path):
    """A path as text that can always be printed (bytes that are not UTF-8 as \\xNN)."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace") if path is not None \
        else "a file"


def os_reason(e):
    """Why a write failed, in plain words."""
    return PLAIN_ERRNO.get(e.errno, e.strerror or type(e).__name__)


def write_failure(path, e):
    """A UserError for a failed write of `path`: its cause in plain words, and that the file
    already there (if any) is unchanged. torch.save reports a short write only as an
    "unexpected pos" RuntimeError, without its cause: the free space and the file-size limit
    tell which it was."""
    if isinstance(e, OSError):
        why = os_reason(e)
    else:
        import resource
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        free = shutil.disk_usage(Path(path).parent).free
        why = "the disk is full" if free < 64 * 2**20 else \
            PLAIN_ERRNO[errno.EFBIG] if limit != resource.RLIM_INFINITY else \
            "the write stopped short (disk full or a file-size limit?)"
    kept = f"; {shown(path)} is unchanged" if Path(path).exists() else ""
    return UserError(f"cannot write {shown(path)}: {why}{kept}")


def check_writable(path, flag, kind="folder"):
    """Refuse an output path before any work fills it: its name must be UTF-8 (a checkpoint in a
    folder whose name is not cannot be memory-mapped back), it must be a `kind` ("folder" or
    "file") or not exist yet, and the folder it is (or will be created in) must take a file: a
    probe is written there and removed. Creates nothing."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{flag} {shown(path)} is not valid UTF-8: choose a name in UTF-8 (runs "
                        "there could not be resumed or evaluated)") from None
    path = Path(path)
    if path.exists() and path.is_dir() != (kind == "folder"):
        what = "a folder" if path.is_dir() else "a file"
        raise UserError(f"{flag} {shown(path)} is {what}, not a {kind}: choose another {flag}")
    folder = path if kind == "folder" else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent                          # where mkdir will create the first one
    if not folder.is_dir():
        raise UserError(f"{flag} {shown(path)}: {shown(folder)} is a file, not a folder: choose "
                        f"another {flag}")
    probe = folder / f".probe.{os.getpid()}.tmp"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        probe.unlink(missing_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {shown(path)}: cannot write in {shown(folder)}: "
                        f"{os_reason(e)}: choose another {flag}") from None


def pid_alive(pid):
    """Whether process `pid` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:               # exists, owned by another user
        return True
    return True


def sweep_temporaries(folder):
    """Remove what interrupted atomic writes left in `folder` (temporary names of processes that
    no longer run); returns the names removed."""
    gone = []
    for p in Path(folder).iterdir() if Path(folder).is_dir() else []:
        m = TEMPORARY.match(p.name)
        if m and p.is_file() and int(m["pid"]) != os.getpid() and not pid_alive(int(m["pid"])):
            p.unlink(missing_ok=True)
            gone.append(p.name)
    return gone


# -----------------------------------------------------------------------------------------------
# Knobs: a dataclass field written with flag() is a command-line flag, defined there only

def flag(default, help, choices=None, type=None, negatable=False, name=None):
    """A knob: a dataclass field carrying its default and its --help text. `type` converts the
    text (default: the field's annotation); a bool is a switch, or --x/--no-x when negatable;
    `name` is the flag's name when it is not the field's (e.g. --dyck_k for DyckConfig.k)."""
    return field(default=default, metadata={"help": help, "choices": choices, "type": type,
                                            "negatable": negatable, "name": name})


def auto_or_count(text):
    """--vocab_size: "auto" or a whole number of at least 1."""
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number, got {text!r}")
    return int(text)


def add_flags(parser, cls, title=None):
    """One flag per flag() field of dataclass `cls`, in a --help group titled `title` (default:
    the class's help_title, else the first line of its docstring; classes of one title share
    a group, in the order they are added). Fields written without flag() are not flags."""
    title = title or getattr(cls, "help_title", None) or \
        (cls.__doc__ or cls.__name__).split("\n")[0]
    group = next((g for g in parser._action_groups if g.title == title), None) or \
        parser.add_argument_group(title)
    for f in fields(cls):
        if "help" not in f.metadata:
            continue
        m = f.metadata
        kind = f.type if isinstance(f.type, type) else next(       # int | None -> int
            t for t in typing.get_args(f.type) if t is not types.NoneType)
        name = "--" + (m["name"] or f.name)
        if kind is bool:
            action = argparse.BooleanOptionalAction if m["negatable"] else "store_true"
            group.add_argument(name, action=action, default=f.default, help=m["help"])
        else:
            choices = m["choices"]() if callable(m["choices"]) else m["choices"]  # defined later
            group.add_argument(name, type=m["type"] or kind, default=f.default, help=m["help"],
                               choices=choices)
    return group


def from_flags(cls, args, **extra):
    """The `cls` dataclass of parsed flags: each flag() field from its flag, the rest from
    `extra` (or their defaults)."""
    return cls(**{f.name: getattr(args, f.metadata["name"] or f.name) for f in fields(cls)
                  if "help" in f.metadata}, **extra)


def flag_values(cfg, *classes):
    """{flag: value} of the flags that the flag() fields of `classes` define."""
    return {name: getattr(cfg, name) for cls in classes for f in fields(cls)
            if "help" in f.metadata for name in [f.metadata["name"] or f.name]}


def one_line_errors(parser):
    """Make argparse report a bad flag as one "error:" line (not its usage block); status 2."""
    parser.error = lambda message: parser.exit(2, f"error: {message} (see --help)\n")
    return parser


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help as the script's docstring lays it out (not re-wrapped, not cut after its first
    paragraph), each flag's default shown once: not again when its help already says what the
    default is, and not for switches or a default of None (the help says what None means)."""

    def _get_help_string(self, action):
        text = action.help or ""
        switch = action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)
        if ("default" in text.lower() or switch
                or action.default in (None, argparse.SUPPRESS) or action.default == []):
            return text
        return text + " (default: %(default)s)"


def script_parser(doc, epilog=None):
    """The argument parser of a script whose module docstring is `doc`: the whole docstring as
    the description, each default shown once (HelpFormatter), and one-line errors."""
    return one_line_errors(argparse.ArgumentParser(
        description=doc.strip(), epilog=epilog, formatter_class=HelpFormatter))


def preset_text(presets):
    """The presets' values, for the end of --help."""
    lines = ["presets (--preset NAME makes these the defaults; flags given still win):"]
    for name, values in presets.items():
        flags = (f"--{k}" if v is True else f"--no-{k}" if v is False else f"--{k} {v}"
                 for k, v in values.items())
        lines.append(textwrap.fill(f"{name}: " + " ".join(flags), width=96, initial_indent="  ",
                                   subsequent_indent="      "))
    return "\n".join(lines)


def parse_with_presets(parser, argv, presets, rerun_defaults):
    """The flags: the parser's defaults, then those of a --config record (rerun_defaults(path,
    parser)), then a --preset's (both read before --help runs, so that --help shows them), then
    the command line."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(presets))
    pre.add_argument("--config")
    first, _ = one_line_errors(pre).parse_known_args(argv)
    if first.config:
        parser.set_defaults(**rerun_defaults(first.config, parser))
    if first.preset:
        parser.set_defaults(**presets[first.preset])
    return parser.parse_args(argv)


# train.py --config: not how the run trains but what this command does with its folder
NOT_RERUN = ("config", "resume", "overwrite")


def rerun_defaults(path, parser):
    """train.py --config RUN/config.json (or RUN): the flags the run was started with
    ("flags" in config.json; a record without it: its top-level keys), each checked against
    the flag it sets, as parser defaults. A key that is no flag is refused."""
    file = Path(path) / "config.json" if Path(path).is_dir() else Path(path)
    try:
        record = json.loads(file.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        why = "no such file" if isinstance(e, FileNotFoundError) else type(e).__name__
        raise UserError(f"--config {path}: cannot read it as train.py's JSON record ({why})") \
            from None
    flags = record.get("flags", record) if isinstance(record, dict) else None
    if not isinstance(flags, dict):
        raise UserError(f"--config {path} holds no flags (a JSON object written by train.py)")
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    # keys a record holds besides flags (older records keep them at the top level)
    extra = ("flags", "provenance") if "flags" not in record else ()
    unknown = [k for k in flags if k not in actions and k not in extra]
    if unknown:
        raise UserError(f"--config {path}: {unknown[0]!r} is not a train.py flag (a record of "
                        "another version? remove the key)")
    return {k: recorded_value(actions[k], v, path) for k, v in flags.items()
            if k in actions and k not in NOT_RERUN}


def recorded_value(action, value, path):
    """A flag's value from a JSON record, as the flag itself would accept it."""
    name, kind = "--" + action.dest, action.type
    bad = f"--config {path}: {name} {value!r} is not "
    if value is None:
        if action.default is not None:
            raise UserError(bad + "a value this flag takes (null)")
        return None
    if action.nargs == 0:                                      # a switch
        if not isinstance(value, bool):
            raise UserError(bad + "true or false")
        return value
    if isinstance(value, bool) or (kind is int and not isinstance(value, int)) or (
            kind is float and not isinstance(value, (int, float))) or (
            kind is str and not isinstance(value, str)):
        raise UserError(bad + {int: "an integer", float: "a number"}.get(kind, "a string"))
    if isinstance(value, str) and kind is not None:
        try:
            value = kind(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise UserError(bad + "a value this flag takes") from None
    if action.choices is not None and value not in action.choices:
        raise UserError(bad + f"one of {', '.join(map(str, action.choices))}")
    return value


def read_metrics(path, fix="delete or repair that line"):
    """The records of a metrics.jsonl (none if it is absent), each a JSON object with a step: a
    broken line in the middle is refused, naming it and what to do (`fix`); a half line at the
    end is what a kill (or a live run) leaves, and is dropped."""
    lines = path.read_text().splitlines() if path.exists() else []
    records = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
            if isinstance(record["step"], int):
                records.append(record)
                continue
        except (ValueError, KeyError, TypeError):
            pass
        if i < len(lines) - 1 or line.endswith("}"):
            raise UserError(f"{show(path)} line {i + 1} is not a metrics record "
                            f"({line[:30]!r}): {fix}")
    return records


def read_config(path):
    """A run's config.json, parsed (guard.check_run_config: that it is a run config)."""
    try:
        return json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{show(path)} is not valid JSON: delete it to use the config saved in "
                        "the checkpoint") from None


def run_checkpoint(path, flag):
    """The checkpoint a RUN argument names: a run folder's ckpt.pt, a checkpoint file, or a
    Hugging Face Llama folder (scripts/hf.py)."""
    path = Path(path)
    if path.is_dir() and (path / "ckpt.pt").is_file():
        return path / "ckpt.pt"
    if path.is_dir() and not (path / "config.json").is_file():
        raise UserError(f"{flag} {path} holds no ckpt.pt (nor a Hugging Face config.json): "
                        "pass a run folder of train.py or a ckpt.pt")
    if path.is_dir() and train_run_record(path / "config.json"):
        raise UserError(f"{flag} {path} is a train.py run folder without its ckpt.pt (the run "
                        "has not saved a checkpoint yet, or it was deleted): pass a run folder "
                        "that holds one, or a ckpt.pt")
    return path


def train_run_record(path):
    """Whether `path` is the config.json train.py writes (a Hugging Face config.json has no
    "stage")."""
    try:
        return "stage" in json.loads(Path(path).read_text())
    except (OSError, ValueError, TypeError):
        return False


def stage_flag(stage, name):
    """The flag of one stage's knob: stage 1's are --ppt_<name>, stage 2's plain."""
    if name == "tokens":
        return f"{stage}_tokens"
    return f"ppt_{name}" if stage == "ppt" else name


def given_flags(parser, argv=None):
    """The destinations set on the command line itself, not by a default or a --preset."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(argv)[0]))


def atomic_write(path, data):
    """Write `data` (str, bytes, or a function that writes to the path it is given) to a
    temporary name beside `path`, then rename it into place: a crash never leaves half a file,
    and concurrent writers (each with its own temporary name) never mix their bytes. A failed
    write (disk full, file too large, read-only) is a UserError that names the path and the
    cause, and leaves the file already there unchanged."""
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            tmp.write_text(data)
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            data(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "unexpected pos" not in str(e) \
                and "inline_container" not in str(e):
            raise
        raise write_failure(path, e) from None
    finally:
        with contextlib.suppress(OSError):       # (no folder to hold it: nothing to remove)
            tmp.unlink(missing_ok=True)


def default_device(name="auto"):
    """The --device to run on ("auto": CUDA, else MPS, else CPU), checked to exist here."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not index.isdigit()):
        raise UserError(f"--device {name!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here (no GPU, or a CPU-only "
                        "PyTorch): use --device cpu or auto")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA "
                        f"device(s), numbered from 0")
    if kind == "mps" and not mps:
        raise UserError(f"--device {name}: MPS (Apple GPU) is not available here: use --device "
                        "cpu or auto")
    return name


def setup_distributed(device):
    """Rank, world size and this process's device (under torchrun: one GPU per process)."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    device = default_device(device)
    if world > 1:
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        atexit.register(torch.distributed.destroy_process_group)
    return {"rank": rank, "world": world, "device": device}


def wrap_model(model, compile, dist):
    """(model to train, model to validate). DDP first, then compile: the compiled graph is split
    at DDP's gradient buckets, so their all-reduce overlaps the backward pass (a compiled model
    inside DDP is one opaque backward). Validation runs the compiled model without DDP.
    dynamic=False: validation batches (another batch size, no targets) compile graphs of their
    own, so the training step keeps the static-shape graph it would have alone; with automatic
    dynamic shapes a second batch size would recompile it with a symbolic batch dimension."""
    fwd = model
    if dist["world"] > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        cuda = dist["device"].startswith("cuda")
        fwd = DDP(model, device_ids=[dist["device"]] if cuda else None,
                  gradient_as_bucket_view=True)
    if not compile:
        return fwd, model
    torch.compiler.reset()  # after stage 1, stage 2's shapes would compile as dynamic
    compiled = torch.compile(fwd, dynamic=False)
    return compiled, torch.compile(model, dynamic=False) if dist["world"] > 1 else compiled


def check_dtype(dtype, device):
    """Training in float16 needs CUDA (its loss scaler). Touches no device."""
    if dtype == "float16" and not str(device).startswith("cuda"):
        raise UserError("--dtype float16 needs CUDA (its loss scaler); use bfloat16 or float32")


def autocast(dtype, device, training=True):
    """(autocast context, dtype name) for --dtype on `device`: "auto" is bfloat16 on CUDA when
    supported, float32 elsewhere; training in float16 needs CUDA (check_dtype)."""
    device_type = "cuda" if str(device).startswith("cuda") else str(device).split(":")[0]
    if dtype == "auto":
        dtype = "bfloat16" if device_type == "cuda" and torch.cuda.is_bf16_supported() \
            else "float32"
    if training:
        check_dtype(dtype, device)
    if dtype == "float32":
        return contextlib.nullcontext(), dtype
    return torch.autocast(device_type, dtype=getattr(torch, dtype)), dtype


@contextlib.contextmanager
def full_precision():
    """float32 matmuls at full precision inside NCA generation, whatever the caller set globally
    (train.py allows TF32 for the model). At T = 1e-4 a logit error of 1e-3 (TF32, or bf16
    matmuls on CPU) changes which cells are near a tie, so most trajectories and some gzip scores
    would depend on the device and on those settings. The caller's settings are restored."""
    per_backend = [b for b in (torch.backends.cuda.matmul,
                               getattr(torch.backends.mkldnn, "matmul", None))
                   if hasattr(b, "fp32_precision")]
    if per_backend:     # PyTorch >= 2.9: the settings its kernels read (the old API is not touched)
        saved = [b.fp32_precision for b in per_backend]
        for b in per_backend:
            b.fp32_precision = "ieee"
    else:
        saved = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        if per_backend:
            for b, v in zip(per_backend, saved):
                b.fp32_precision = v
        else:
            torch.set_float32_matmul_precision(saved)


_POOL = None


def thread_pool():
    """One thread per core, made once (NCA rollouts and gzip scores run their slices there)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    return _POOL


def split_over_threads(device, fn, *seeds):
    """fn(*seeds) on CPU in one thread per core, each on a slice of the batch. The ops are small
    (a grid is 144 cells), so one Python thread leaves cores idle; torch releases the GIL inside
    ops, and trajectories are independent, so the result is the same as one call."""
    n = len(seeds[0])
    workers = os.cpu_count() or 1
    if str(device) != "cpu" or workers == 1 or n < 128:
        return fn(*seeds)
    parts = [torch.tensor_split(s, workers) for s in seeds]
    out = list(thread_pool().map(fn, *parts))
    if isinstance(out[0], tuple):
        return tuple(torch.cat(o) for o in zip(*out))
    return torch.cat(out)


# Optional packages, imported when a picture is asked for: without them, one line

def pyplot():
    """matplotlib.pyplot (Agg); matplotlib is optional, so without it one line."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("--plot needs matplotlib, which is optional: "
                        "pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def pillow(refusal="drawing PNG or GIF needs Pillow, which is optional: pip install "
                    "pillow"):
    """PIL's Image, ImageDraw and ImageFont; Pillow is optional, so without it the one-line
    `refusal`."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise UserError(refusal) from None
    return Image, ImageDraw, ImageFont


def progress_bar(total, desc, unit="it", disable=False, **tqdm_kw):
    """A tqdm bar on a terminal. Off a terminal (a log file, a pipe) a bar's carriage-return
    updates would pile up in the log, so this gives PlainProgress instead: plain lines."""
    from tqdm import tqdm
    if disable or sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, disable=disable, **tqdm_kw)
    return PlainProgress(total, desc, unit, tqdm_kw.get("initial", 0))


def calls(*fns):
    """One callback that calls each of `fns` with the same arguments, in turn (e.g. a per-batch
    score and a progress bar's update, as model.evaluate's `each`)."""
    def call(*args):
        for fn in fns:
            fn(*args)
    return call


def duration(seconds):
    """A duration as a person reads it: 45s, 3m12s, 2h05m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 2 * 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def skip_time(bar, seconds):
    """Leave `seconds` (validation, a checkpoint) out of a progress bar's rate and ETA: its clock
    starts that much later (tqdm: its start and its last update, which its smoothed rate
    measures from)."""
    if isinstance(bar, PlainProgress):
        bar.skipped += seconds
    elif bar is not None and not getattr(bar, "disable", True):
        bar.start_t += seconds
        bar.last_print_t += seconds


class PlainProgress:
    """The part of tqdm's interface used here, as plain lines on stdout: `desc: n/total unit,
    elapsed, ETA` when nothing else was printed for `interval` seconds, and once at the end. The
    ETA assumes the rate so far (since this bar started) holds."""
    interval = 30.0

    def __init__(self, total, desc, unit="it", initial=0):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.postfix, self.closed, self.last = "", False, time.monotonic()
        self.start, self.initial, self.skipped = self.last, initial, 0.0   # skip_time()

    def write(self, line):
        print(line, flush=True)
        self.last = time.monotonic()

    def update(self, n=1):
        self.n += n
        if time.monotonic() - self.last >= self.interval:
            self.write(self.line())

    def line(self):
        # total=None (a count with no known end, like tqdm's) shows just the count
        of = "" if self.total is None else f"/{self.total:,}"
        elapsed = time.monotonic() - self.start
        done = self.n - self.initial
        if self.total is None or self.n >= self.total:
            eta = ""
        elif done > 0:                       # at the rate of the steps alone (skip_time)
            eta = f", ETA {duration((elapsed - self.skipped) * (self.total - self.n) / done)}"
        else:
            eta = ", ETA unknown"
        return f"{self.desc}: {self.n:,}{of} {self.unit}{self.postfix}, {duration(elapsed)}{eta}"

    def set_postfix(self, **kw):
        self.postfix = "".join(f" {k} {v}" for k, v in kw.items())

    def set_description_str(self, desc, refresh=True):
        """(tqdm's) Off a terminal a validation shows as its line when it ends."""

    def close(self):
        if not self.closed:
            self.closed = True
            self.write(self.line())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
