"""The share columns of lab/RESULTS.md's E2 and E4 tables, recomputed from the per-seed Δ those
tables list (the runs are not kept): share = mean over seeds of (X − scratch) / mean of
(REF − scratch), with Fieller's 95% interval (lab.stats.share_kept). E2's REF is c4 − scratch;
E4's is each body's full transfer (nca, c4). Prints one markdown table.

  python lab/reshare.py                 # reads lab/RESULTS.md
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lab.stats import share_kept, share_text  # noqa: E402
from util import UserError, cli, script_parser  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def section(text, heading):
    """The lines of the section whose '## ' heading starts with `heading`."""
    lines, out, inside = text.splitlines(), [], False
    for line in lines:
        if line.startswith("## "):
            inside = line[3:].startswith(heading)
        elif inside:
            out.append(line)
    if not out:
        raise UserError(f"no section '{heading}' in the results file")
    return out


def per_seed_rows(lines):
    """{row name: [per-seed Δ]} of the section's table rows whose second cell is a list of
    numbers (written with the typographic minus)."""
    rows = {}
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3:
            continue
        try:
            rows[cells[0]] = [float(x.replace("−", "-")) for x in cells[1].split(",")]
        except ValueError:
            continue
    return rows


def shares(text):
    """[(experiment, row, share dict)] of E2 (each rung against c4 − scratch) and E4 (each
    re-initialized arm against its body's full transfer)."""
    out = []
    e2 = per_seed_rows(section(text, "E2"))
    ref = e2["c4 − scratch"]
    out += [("E2", name, share_kept(list(zip(d, ref)))) for name, d in e2.items()
            if name != "c4 − scratch"]
    e4 = per_seed_rows(section(text, "E4"))
    for body in ("nca", "c4"):
        ref = e4[f"{body} (full)"]
        out += [("E4", name, share_kept(list(zip(d, ref)))) for name, d in e4.items()
                if name.startswith(f"{body},")]
    return out


@cli
def main(argv=None):
    p = script_parser(__doc__)
    p.add_argument("--results", default=str(RESULTS), help="the results file to read")
    args = p.parse_args(argv)
    path = Path(args.results)
    if not path.is_file():
        raise UserError(f"--results {path} not found")
    rows = shares(path.read_text())
    print("| experiment | row | units | share (95% Fieller interval) |")
    print("| --- | --- | ---: | --- |")
    for exp, name, s in rows:
        print(f"| {exp} | {name} | {s['units']} | {share_text(s)} |")
    return rows


if __name__ == "__main__":
    main()
