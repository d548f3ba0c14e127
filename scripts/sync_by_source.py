"""Group an `eval.sync_validate` log by clip source (the file-name prefix before the first `_`).

    python scripts/sync_by_source.py runs/sync16/fresh.log

Prints a markdown table: clips, imposed shifts recovered within +-1 frame, shifts wrong and not flagged,
in-sync clips read 0 +- 40 ms or flagged, in-sync clips flagged, and the in-sync readings that carried no flag.
"""

import collections
import re
import sys

LINE = re.compile(r"(\S+)\.\w+\s+(\S+)\s+(\d+) frames\s+in-sync\s+([+-]\d+) ms flag (\S+)\s+shifts (.*)")


def table(lines) -> str:
    groups = collections.defaultdict(lambda: {"n": 0, "ok": 0, "flag": 0, "rec": 0, "wrong": 0, "marks": 0,
                                              "readings": []})
    for line in lines:
        m = LINE.match(line)
        if not m:
            continue
        name, _, _, ms, flag, marks = m.groups()
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
    return "\n".join(out)


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as fh:
        print(table(fh))
