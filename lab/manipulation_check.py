"""Manipulation check of a stage-1 NCA body: does it use the time order of its frames? A body
that learned rule dynamics predicts a grid from the grids just before it, so on the same frames
put out of order (each sequence's frames permuted, as `--frame_order shuffled` trains on) its
loss rises; a body that learned only the colour and patch statistics of the rules, or a bag of
frames, loses nothing. Beside it, the model-free predictors that rule learning must beat on the
ordered frames: copying the previous grid and the lookup of the same sequence (lab/probes.py).

    python lab/manipulation_check.py out/run [--shuffled_body out/run-shuffled] --out m.json
    python lab/manipulation_check.py --summarize m0=a.json m0=b.json ... --out summary.md

Everything is measured on N sequences (--num_seqs, default 128) of the checkpoint's own held-out
rules (recorded in its "nca" key), with trajectories from a fixed --seed (seed 0 gives
eval.py's sequences):
  loss, token accuracy   on the time-ordered frames (loss: nats per supervised label, as
                         validation; accuracy: patch tokens of every grid after the first)
  shuffled               the same on the same frames in a permuted order (nca.py's permutation
                         of --frame_order shuffled, from the same trajectory seeds); the frames
                         are checked to be the same ones
  gain                   shuffled loss - ordered loss, with its standard error over sequences;
                         "matched" restricts both losses to the tokens supervised in both orders
                         (the ordered loss never scores the first frame, the shuffled one scores
                         it unless it comes first), so the two sides score the same tokens
  copy, lookup           the model-free predictors' token accuracy on the ordered frames (and,
                         in the JSON, on the shuffled ones: how much order gives them)
  --shuffled_body RUN    a body trained on shuffled frames of the same rule bank: its loss on the
                         ordered frames (the control's side of the comparison) and its own gain
--summarize turns the JSON of several runs (ARM=FILE, one per seed) into the per-seed and
mean +- 95% t table and the pass / adoption verdict of lab/experiments/
stage1_mcheck_search.sh, whose header fixes the rules this applies.
"""
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import guard  # noqa: E402
import nca  # noqa: E402
from lab import probes  # noqa: E402
from data.common import show  # noqa: E402
from model import evaluate, model_from_checkpoint  # noqa: E402
from lab.stats import mean_ci  # noqa: E402
from util import (UserError, atomic_write, cli, default_device, run_checkpoint,  # noqa: E402
                  script_parser)
from util.log import provenance  # noqa: E402


def stage1_checkpoint(run, flag="RUN"):
    """(path, checkpoint) of a stage-1 NCA run folder or ckpt.pt, refused unless it records its
    held-out rules."""
    path = run_checkpoint(run, flag)
    ck = guard.peek(path, flag)
    info = ck.get("nca")
    if ck.get("stage") != "ppt" or not info or not info.get("val_seeds"):
        raise UserError(f"{flag} {show(path)} is not a stage-1 NCA checkpoint (it records no "
                        "held-out rules in its 'nca' key)")
    return path, ck


def permutations(cfg, num_seqs, seed):
    """Each validation sequence's frame order under --frame_order shuffled: row i lists the
    time index of the frame at each slot (nca.make_sequences' permutation, keyed by the
    trajectory seeds nca.val_batches gives sequence i)."""
    traj = nca.stream_key(torch.arange(num_seqs), 10, seed)
    return nca.uniform(nca.stream_key(traj, 11)[:, None], torch.arange(cfg.frames)).argsort(1)


def stream_keys(perm, cfg, length, shift):
    """(N, length) key of each position: time index * grid_len + offset of the token it holds
    (shift 0, inputs) or predicts (shift 1, labels), in sequences whose slots hold frames `perm`
    (the identity for ordered sequences)."""
    q = torch.arange(length) + shift
    slot = (q // cfg.grid_len).clamp(max=cfg.frames - 1)      # past the last frame: padding
    return perm[:, slot] * cfg.grid_len + q % cfg.grid_len


def score(model, cfg, info, num_seqs, seed, batch_size, device):
    """The model's loss and grid accuracies (with copy and lookup beside) on the sequences of
    `cfg` (its frame_order says which), and the inputs, labels and per-position losses."""
    batches = nca.val_batches(cfg, info["val_seeds"], num_seqs, batch_size, device, seed=seed,
                              mask_delimiters=info.get("mask_delimiters", False))
    acc, rows = probes.GridAccuracy(cfg), []

    def each(x, y, nll, pred):
        acc(x, y, nll, pred)
        rows.append((x.cpu(), y.cpu(), nll.double().cpu()))
    loss = evaluate(model, batches, device=device, each=each)["loss"]
    x, y, nll = (torch.cat(t) for t in zip(*rows))
    return {"loss": loss, **acc.result()}, x, y, nll


def seq_loss(nll, keep):
    """Per-sequence mean loss over the positions `keep`."""
    return (nll * keep).sum(1) / keep.sum(1).clamp(min=1)


def gain(ordered, shuffled, perm, cfg):
    """Shuffled - ordered loss per sequence, over all supervised labels and over the labels
    supervised in both orders; also checks that the two orders hold the same frames."""
    (xo, yo, lo), (xs, ys, ls) = ordered, shuffled
    n, length = xo.shape
    ident = torch.arange(cfg.frames).expand(n, -1)
    key_in = stream_keys(perm, cfg, length, 0)          # where each shuffled input sits in time
    seen = key_in < length
    if not torch.equal(xs[seen], xo.gather(1, key_in.clamp(max=length - 1))[seen]):
        raise UserError("the shuffled sequences do not hold the ordered sequences' frames: "
                        "nca.py's --frame_order shuffled scheme changed; update permutations()")
    ko, ks = stream_keys(ident, cfg, length, 1), stream_keys(perm, cfg, length, 1)
    vo, vs = yo != -100, ys != -100
    space = cfg.frames * cfg.grid_len                   # one more column for the unsupervised
    in_o = torch.zeros(n, space + 1, dtype=torch.bool).scatter_(1, ko.where(vo, space), True)
    in_s = torch.zeros(n, space + 1, dtype=torch.bool).scatter_(1, ks.where(vs, space), True)
    mo, ms = vo & in_s.gather(1, ko), vs & in_o.gather(1, ks)
    assert torch.equal(mo.sum(1), ms.sum(1))
    every = seq_loss(ls, vs) - seq_loss(lo, vo)
    matched_o, matched_s = seq_loss(lo, mo), seq_loss(ls, ms)
    return {"gain": float(every.mean()), "gain_se": probes.standard_error(every),
            "matched": {"tokens": int(mo.sum()), "ordered_loss": float(matched_o.mean()),
                        "shuffled_loss": float(matched_s.mean()),
                        "gain": float((matched_s - matched_o).mean()),
                        "gain_se": probes.standard_error(matched_s - matched_o)}}


def check(model, info, num_seqs, seed, batch_size, device):
    """One body on the ordered and the shuffled sequences of the held-out rules in `info`."""
    cfg = nca.NCAConfig(**info["config"])
    res, data = {}, {}
    for name, order in (("ordered", "time"), ("shuffled", "shuffled")):
        res[name], *data[name] = score(model, dataclasses.replace(cfg, frame_order=order), info,
                                       num_seqs, seed, batch_size, device)
    return res | gain(data["ordered"], data["shuffled"], permutations(cfg, num_seqs, seed), cfg)


def same_rules(info, other, flag):
    """Refuse a control body whose held-out rules or NCA setting differ from the checked body's
    (or that was not trained on shuffled frames)."""
    mine, theirs = dict(info["config"]), dict(other["config"])
    if theirs.pop("frame_order", None) != "shuffled":
        raise UserError(f"{flag} was not trained on shuffled frames (--frame_order shuffled)")
    mine.pop("frame_order", None)
    if mine != theirs or list(info["val_seeds"]) != list(other["val_seeds"]):
        raise UserError(f"{flag} has another NCA setting or other held-out rules than the "
                        "checked body: train it with the same flags and --rule_seed")


def line(label, r):
    """The one-line report."""
    o, s, m = r["ordered"], r["shuffled"], r["matched"]
    text = (f"{label}: ordered {o['loss']:.4f} nats/token, acc {o['token_acc']:.1%} | shuffled "
            f"{s['loss']:.4f}, acc {s['token_acc']:.1%} | gain {r['gain']:+.4f} "
            f"(se {r['gain_se']:.4f}; matched {m['gain']:+.4f}) | copy {o['copy_token_acc']:.1%}"
            f" lookup {o['lookup_token_acc']:.1%}")
    if r.get("shuffled_body"):
        b = r["shuffled_body"]
        text += (f" | shuffled body on ordered {b['ordered']['loss']:.4f}, acc "
                 f"{b['ordered']['token_acc']:.1%} (its gain {b['gain']:+.4f})")
    return text + f" [{r['num_seqs']} seqs of {r['rules']} held-out rules, seed {r['seed']}]"


# ---------------------------------------------------------------- the search's verdict

def summarize(items, margin, title=None):
    """The markdown summary of checks labelled by arm (one JSON per seed): per seed and
    mean +- 95% t over seeds, then each arm's verdict under the pass rule and the adopted arm
    (lab/experiments/stage1_mcheck_search.sh): gain and matched gain >= margin with their
    intervals above 0, mean accuracy above lookup's and above copy's; among passing arms the
    cheapest (body parameters x stage-1 tokens), ties to the larger mean gain."""
    arms = {}
    for arm, path in items:
        try:
            arms.setdefault(arm, []).append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read check {path}: {e}") from None
    pct = lambda v: f"{100 * v:.1f}"
    ci = lambda m, h, f: f"{f(m)} ± " + (f(h).lstrip("+") if h is not None else "?")
    out = [f"# {title}", ""] if title else []
    out += ["| arm | seed | ordered loss | shuffled loss | gain | matched gain | token acc | "
           "copy | lookup | acc − lookup | acc − copy | stage 1 s |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    verdicts = []
    for arm, rs in arms.items():
        rs.sort(key=lambda r: r.get("model_seed", 0))
        col = {k: [f(r) for r in rs] for k, f in {
            "lo": lambda r: r["ordered"]["loss"], "ls": lambda r: r["shuffled"]["loss"],
            "g": lambda r: r["gain"], "gm": lambda r: r["matched"]["gain"],
            "acc": lambda r: r["ordered"]["token_acc"],
            "copy": lambda r: r["ordered"]["copy_token_acc"],
            "look": lambda r: r["ordered"]["lookup_token_acc"],
            "dl": lambda r: r["ordered"]["token_acc"] - r["ordered"]["lookup_token_acc"],
            "dc": lambda r: r["ordered"]["token_acc"] - r["ordered"]["copy_token_acc"]}.items()}
        for i, r in enumerate(rs):
            out.append(f"| {arm} | {r.get('model_seed')} | {col['lo'][i]:.4f} | {col['ls'][i]:.4f}"
                       f" | {col['g'][i]:+.4f} | {col['gm'][i]:+.4f} | {pct(col['acc'][i])} | "
                       f"{pct(col['copy'][i])} | {pct(col['look'][i])} | {col['dl'][i]*100:+.1f} "
                       f"| {col['dc'][i]*100:+.1f} | {r.get('stage1_seconds') or ''} |")
        m = {k: mean_ci(v) for k, v in col.items()}
        f4, p1 = (lambda v: f"{v:+.4f}"), (lambda v: f"{100 * v:+.1f}")   # signed; ± strips
        out.append(f"| **{arm}, mean ± 95% t** | {len(rs)} | {m['lo'][0]:.4f} | "
                   f"{m['ls'][0]:.4f} | **{ci(*m['g'], f4)}** | {ci(*m['gm'], f4)} | "
                   f"{pct(m['acc'][0])} | {pct(m['copy'][0])} | {pct(m['look'][0])} | "
                   f"**{ci(*m['dl'], p1)}** | {ci(*m['dc'], p1)} | |")
        lower = lambda k: None if m[k][1] is None else m[k][0] - m[k][1]
        tests = {f"gain >= {margin}": m["g"][0] >= margin,
                 "gain CI > 0": lower("g") is not None and lower("g") > 0,
                 f"matched gain >= {margin}": m["gm"][0] >= margin,
                 "matched CI > 0": lower("gm") is not None and lower("gm") > 0,
                 "acc > lookup": m["dl"][0] > 0, "acc > copy": m["dc"][0] > 0}
        cost = rs[0]["body_params"] * rs[0]["tokens"]
        verdicts.append((arm, all(tests.values()), cost, m["g"][0], tests, len(rs)))
    out += ["", f"Pass rule (margin {margin} nats/token): every test below, over the seeds.", ""]
    for arm, ok, cost, g, tests, n in verdicts:
        failed = [k for k, v in tests.items() if not v]
        out.append(f"- {arm} ({n} seeds, cost {cost:.2e} parameter-tokens): "
                   + ("**PASS**" if ok else "fail: " + ", ".join(failed)))
    passing = sorted((v for v in verdicts if v[1]), key=lambda v: (v[2], -v[3]))
    adopted = f"**{passing[0][0]}** (the cheapest passing arm; ties: the larger mean gain)" \
        if passing else "none: no arm passes; the preset stays as it is"
    out += ["", f"Adopted: {adopted}"]
    return "\n".join(out) + "\n"


@cli
def main(argv=None):
    p = script_parser(__doc__)
    p.add_argument("run", nargs="?", help="a stage-1 NCA run folder or ckpt.pt")
    p.add_argument("--shuffled_body", metavar="RUN",
                   help="a body trained with --frame_order shuffled on the same rule bank")
    p.add_argument("--num_seqs", type=int, default=128, help="held-out sequences")
    p.add_argument("--seed", type=int, default=0, help="seed of the trajectories and the "
                   "permutations (0: eval.py's sequences)")
    p.add_argument("--batch_size", type=int, default=16, help="sequences per forward pass")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, mps")
    p.add_argument("--label", help="name in the printed line (default: the run)")
    p.add_argument("--out", help="write the result as JSON here (with --summarize: markdown)")
    p.add_argument("--summarize", nargs="+", metavar="ARM=JSON",
                   help="instead: the table and verdict of these checks")
    p.add_argument("--margin", type=float, default=0.05,
                   help="with --summarize: the pass rule's least mean gain, nats/token")
    p.add_argument("--title", help="with --summarize: a heading for the table")
    args = p.parse_args(argv)
    if args.summarize:
        items = [s.split("=", 1) for s in args.summarize]
        if any(len(i) != 2 for i in items):
            raise UserError("--summarize takes ARM=JSON items")
        text = summarize(items, args.margin, args.title)
        if args.out:
            atomic_write(args.out, text)
        print(text, end="")
        return text
    if not args.run:
        raise UserError("give a stage-1 run (or --summarize)")
    if args.num_seqs < 2 or args.batch_size < 1:
        raise UserError("--num_seqs must be at least 2 and --batch_size at least 1")
    device = default_device(args.device)
    path, ck = stage1_checkpoint(args.run)
    info = ck["nca"]
    model = model_from_checkpoint(ck, device).eval()
    res = {"run": str(args.run), "ckpt": str(path), "step": ck.get("step"),
           "tokens": ck.get("tokens"), "model_seed": (ck.get("config") or {}).get("seed"),
           "rule_seed": (ck.get("config") or {}).get("rule_seed"),
           "body_params": model.num_params(),
           "nca": info["config"], "rules": len(info["val_seeds"]), "num_seqs": args.num_seqs,
           "seed": args.seed}
    done = Path(args.run) / "done"                   # the experiment scripts' marker: seconds
    if done.is_file() and done.read_text().strip().isdigit():
        res["stage1_seconds"] = int(done.read_text())
    res |= check(model, info, args.num_seqs, args.seed, args.batch_size, device)
    if args.shuffled_body:
        spath, sck = stage1_checkpoint(args.shuffled_body, "--shuffled_body")
        same_rules(info, sck["nca"], "--shuffled_body")
        res["shuffled_body"] = {"run": str(args.shuffled_body), "ckpt": str(spath),
                                **check(model_from_checkpoint(sck, device).eval(), info,
                                        args.num_seqs, args.seed, args.batch_size, device)}
    res["provenance"] = provenance("lab/manipulation_check.py", argv, device)
    print(line(args.label or args.run, res))
    if args.out:
        atomic_write(args.out, json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
