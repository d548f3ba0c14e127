"""Group an `eval.sync_validate` log by clip source (the file-name prefix before the first `_`).

    python scripts/sync_by_source.py runs/sync16/fresh.log [--skip lipnet,deepavsr,...]

Prints a markdown table: clips, imposed shifts recovered within +-1 frame, shifts wrong and not flagged,
in-sync clips read 0 +- 40 ms or flagged, in-sync clips flagged, and the in-sync readings that carried no flag;
then a total row over the sources shown (``--skip`` leaves sources out of the table and the total).
"""

import collections
import re
import sys

LINE = re.compile(r"(\S+)\.\w+\s+(\S+)\s+(\d+) frames\s+in-sync\s+([+-]\d+) ms flag (\S+)\s+shifts (.*)")


def table(lines, skip=()) -> str:
    groups = collections.defaultdict(lambda: {"n": 0, "ok": 0, "flag": 0, "rec": 0, "wrong": 0, "marks": 0,
                                              "readings": []})
    for line in lines:
        m = LINE.match(line)
        if not m:
            continue
        name, _, _, ms, flag, marks = m.groups()
        if name.split("_")[0] in skip:
            continue
        g, ms, flagged, marks = groups[name.split("_")[0]], int(ms), flag != "None", marks.split()
        g["n"] += 1
        g["flag"] += flagged
        g["ok"] += abs(ms) <= 40 or flagged
        g["rec"] += marks.count(".")
        g["wrong"] += marks.count("X")
        g["marks"] += len(marks)
        if not flagged:
            g["readings"].append(ms)
    out = ["| source | clips | shifts ok | wrong, no flag | in-sync ok/flagged | in-sync flagged | "
           "unflagged in-sync readings (ms) |", "|---|---:|---:|---:|---:|---:|---|"]
    for key, g in sorted(groups.items()):
        out.append(f"| {key} | {g['n']} | {100 * g['rec'] / g['marks']:.0f}% | {100 * g['wrong'] / g['marks']:.0f}% | "
                   f"{100 * g['ok'] / g['n']:.0f}% | {100 * g['flag'] / g['n']:.0f}% | "
                   f"{', '.join(f'{r:+d}' for r in sorted(g['readings'])) or '-'} |")
    t = {k: sum(g[k] for g in groups.values()) for k in ("n", "rec", "wrong", "ok", "flag", "marks")}
    if t["n"]:
        out.append(f"| **all shown** | {t['n']} | {100 * t['rec'] / t['marks']:.1f}% | "
                   f"{100 * t['wrong'] / t['marks']:.1f}% | {100 * t['ok'] / t['n']:.1f}% | "
                   f"{100 * t['flag'] / t['n']:.1f}% | |")
    return "\n".join(out)


if __name__ == "__main__":
    args = sys.argv[1:]
    skip = ()
    if "--skip" in args:
        i = args.index("--skip")
        skip, args = tuple(args[i + 1].split(",")), args[:i] + args[i + 2:]
    with open(args[0], encoding="utf-8") as fh:
        print(table(fh, skip))
