"""`pip check`, except for the requirements a requirements file leaves out on purpose.

A requirements file may name packages it does not install, one per line, as
`# omit: NAME  why`. A package that requires one of them is not a broken install: the
omission was measured (see loader/requirements.txt). Anything else `pip check` finds is.

Usage: python pip_check.py REQUIREMENTS   (run with the environment's own python)
"""

import re
import subprocess
import sys


def omitted(requirements: str) -> set[str]:
    names = set()
    with open(requirements, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"#\s*omit:\s*([A-Za-z0-9._-]+)", line)
            if m:
                names.add(canonical(m.group(1)))
    return names


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> int:
    skip = omitted(sys.argv[1])
    out = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "check"],
        capture_output=True,
        text=True,
    )
    problems = []
    for line in out.stdout.splitlines():
        m = re.match(r"\S+ \S+ requires ([A-Za-z0-9._-]+), which is not installed\.", line)
        if m and canonical(m.group(1)) in skip:
            continue
        if line.strip() and not line.startswith("No broken requirements"):
            problems.append(line)
    for line in problems:
        print(line, file=sys.stderr)
    if out.returncode != 0 and not out.stdout.strip():
        print(out.stderr, file=sys.stderr)
        return 1
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
