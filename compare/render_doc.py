"""Writes docs/comparison.md from the raw results of compare/run_compare.py and the page's
template, compare/comparison.md.in, so that every number on the page comes from the run.

    python3 compare/render_doc.py --results target/compare-results.json \
        --template compare/comparison.md.in --doc docs/comparison.md

The template is the page, written by hand, with placeholders the run fills:

  {{generated}}                  the table section (run_compare.markdown), between markers
  {{meta:KEY}}                   date, elapsed (seconds), command
  {{count:TOOL:CORPUS:FIELD}}    detected, malicious, fp, benign, errors, unsupported,
                                 malformed, malformed_clean
  {{best_static:CORPUS}}         the static peer that detects the most there, with its count
  {{timing:METHOD:seconds}}      median seconds of the checkpoint timing (bare, strace,
  {{timing:METHOD:ratio}}        monitor, daemon) and its ratio to the bare load
  {{misses:TOOL}}                that tool's misses, one line each, with the reason the
                                 template's reasons block gives for the file
  {{benign_errors:TOOL}}         the benign files that tool could not scan, with what it said
  {{timing_goal}}                whether monitor's checkpoint cost met the 1.2x goal, and
                                 strace's against it

The reasons block is the human part that must stay true of the numbers:

  <!-- reasons
  `glob-of-a-file`: why it is missed
  `glob-of-a-file` (error): why, only where the tool's outcome for it is `error`
  -->

The first line whose glob (and outcome, when given) fits a miss gives its reason: specific
lines first, general ones after.

A miss no reason matches is still listed, marked as unexplained, and the renderer says so on
stderr (and exits 3 with --strict): the page never hides a new miss behind old prose.
"""

import argparse
import fnmatch
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_compare  # noqa: E402  (the table's own code and markers)

STATIC = run_compare.PEERS
UNEXPLAINED = "**no reason written yet** (add one to compare/comparison.md.in)"


def reasons_of(template):
    match = re.search(r"<!-- reasons\n(.*?)-->\n?", template, re.S)
    if not match:
        return template, []
    reasons = []
    for line in match.group(1).splitlines():
        m = re.match(r"\s*`([^`]+)`(?:\s*\((\w+)\))?:\s*(.+)", line)
        if m:
            reasons.append((m.group(1), m.group(2), m.group(3).strip()))
    return template[:match.start()] + template[match.end():], reasons


def reason_for(row, reasons):
    file = row["file"]
    for pattern, outcome, why in reasons:
        if outcome and outcome != row["outcome"]:
            continue
        if fnmatch.fnmatch(file, pattern) or fnmatch.fnmatch(os.path.basename(file), pattern):
            return why
    return None


def render(template, results):
    rows, meta, timing = results["rows"], results["meta"], results.get("timing")
    table = run_compare.summarize(rows)
    template, reasons = reasons_of(template)
    unexplained = []

    def count(tool, corpus, field):
        t = table.get((tool, corpus))
        if t is None:
            raise SystemExit("render: no results for %s on %s" % (tool, corpus))
        return str(t[field])

    def best_static(corpus):
        scored = [(table[(t, corpus)]["detected"], t) for t in STATIC if (t, corpus) in table]
        if not scored:
            return "no static peer"
        n, tool = max(scored)
        return "%s (%d)" % (tool, n)

    def timing_value(method, what):
        if not timing:
            return "?"
        med = {k: sorted(v)[len(v) // 2] for k, v in timing["times"].items()}
        if what == "seconds":
            return "%.2f" % med[method]
        return "%.2fx" % (med[method] / med["bare"])

    def misses(tool):
        lines = []
        for corpus in dict.fromkeys(r["corpus"] for r in rows):
            t = table.get((tool, corpus))
            for r in (t or {}).get("misses", []):
                why = reason_for(r, reasons)
                if why is None:
                    unexplained.append("%s: %s" % (tool, r["file"]))
                    why = UNEXPLAINED
                lines.append("- `%s` (%s, %s): %s" % (r["file"], corpus, r["outcome"], why))
        return "\n".join(lines) if lines else "- none"

    def benign_errors(tool):
        lines = ["- `%s` (%s): %s" % (r["file"], r["corpus"], r["detail"]) for r in rows
                 if r["tool"] == tool and r["label"] == "benign" and r["outcome"] == "error"]
        return "\n".join(lines) if lines else "- none"

    def timing_goal():
        if not timing:
            return "No checkpoint timing was made in this run."
        med = {k: sorted(v)[len(v) // 2] for k, v in timing["times"].items()}
        theirs = med["strace"] / med["bare"]

        def judged(method, name):
            ours = med[method] / med["bare"]
            return "%s is %s the goal of 1.2x the bare load (%.2fx) and %s strace's" % (
                name, "within" if ours <= 1.2 else "above", ours,
                "less than" if ours < theirs else "not less than")

        parts = [judged("monitor", "`--local`'s cost")]
        if "daemon" in med:
            parts.insert(0, judged("daemon", "the daemon scan's cost"))
        return "In this run %s (strace: %.2fx)." % ("; ".join(parts), theirs)

    def fill(m):
        kind, _, rest = m.group(1).partition(":")
        args = rest.split(":") if rest else []
        if kind == "generated":
            body = run_compare.markdown(rows, meta, timing)
            return "%s\n%s\n%s" % (run_compare.BEGIN, body, run_compare.END)
        if kind == "meta":
            value = meta[args[0]]
            return "%.0f" % value if isinstance(value, float) else str(value)
        if kind == "count":
            return count(*args)
        if kind == "best_static":
            return best_static(*args)
        if kind == "timing":
            return timing_value(*args)
        if kind == "misses":
            return misses(*args)
        if kind == "benign_errors":
            return benign_errors(*args)
        if kind == "timing_goal":
            return timing_goal()
        raise SystemExit("render: unknown placeholder {{%s}}" % m.group(1))

    page = re.sub(r"\{\{([^}]+)\}\}", fill, template)
    return page, unexplained


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", required=True)
    p.add_argument("--template", required=True)
    p.add_argument("--doc", required=True)
    p.add_argument("--strict", action="store_true", help="exit 3 when a miss has no reason")
    args = p.parse_args()
    with open(args.results) as f:
        results = json.load(f)
    if "meta" not in results:
        raise SystemExit("render: %s is from a partial run (no meta): run `cargo xtask compare`"
                         % args.results)
    with open(args.template) as f:
        page, unexplained = render(f.read(), results)
    with open(args.doc + ".tmp", "w") as f:
        f.write(page)
    os.replace(args.doc + ".tmp", args.doc)
    for miss in unexplained:
        print("render: warning: no reason for the miss %s" % miss, file=sys.stderr)
    print("render: %s written (%d misses without a reason)" % (args.doc, len(unexplained)))
    if unexplained and args.strict:
        sys.exit(3)


if __name__ == "__main__":
    main()
