"""Small helpers shared by the scripts: knobs as dataclass fields turned into flags, the one
error class and the one place it becomes an "error:" line, atomic file writes, the --device and
--dtype choices, and progress bars that stay readable in log files."""
import argparse
import contextlib
import errno
import functools
import os
import re
import shutil
import sys
import time
import types
import typing
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


# The line Ctrl-C prints; a training stage replaces it with one that knows its steps (report.Log).
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


def add_flags(parser, cls, title=None):
    """One flag per flag() field of dataclass `cls`, in a --help group titled `title` (default:
    the first line of the class docstring). Fields written without flag() are not flags."""
    group = parser.add_argument_group(title or (cls.__doc__ or cls.__name__).split("\n")[0])
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


def progress_bar(total, desc, unit="it", disable=False, **tqdm_kw):
    """A tqdm bar on a terminal. Off a terminal (a log file, a pipe) a bar's carriage-return
    updates would pile up in the log, so this gives PlainProgress instead: plain lines."""
    from tqdm import tqdm
    if disable or sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, disable=disable, **tqdm_kw)
    return PlainProgress(total, desc, unit, tqdm_kw.get("initial", 0))


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


class PlainProgress:
    """The part of tqdm's interface used here, as plain lines on stdout: `desc: n/total unit,
    elapsed, ETA` when nothing else was printed for `interval` seconds, and once at the end. The
    ETA assumes the rate so far (since this bar started) holds."""
    interval = 30.0

    def __init__(self, total, desc, unit="it", initial=0):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.postfix, self.closed, self.last = "", False, time.monotonic()
        self.start, self.initial = self.last, initial

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
        elif done > 0:
            eta = f", ETA {duration(elapsed * (self.total - self.n) / done)}"
        else:
            eta = ", ETA unknown"
        return f"{self.desc}: {self.n:,}{of} {self.unit}{self.postfix}, {duration(elapsed)}{eta}"

    def set_postfix(self, **kw):
        self.postfix = "".join(f" {k} {v}" for k, v in kw.items())

    def close(self):
        if not self.closed:
            self.closed = True
            self.write(self.line())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
