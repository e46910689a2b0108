"""schemathesis' command line (the arguments are its own), with one bug of Debian 12's Python
(3.11.2) kept out of the run.

That Python's ast.parse can fail with "SystemError: AST constructor recursion depth mismatch"
on a valid module (CPython gh-106905, fixed in 3.11.5). Hypothesis parses its callers' source
to describe their lambdas, so the error would end a run at random. For such a failure this
raises SyntaxError, which Hypothesis already takes as "source not available".
"""

import ast
import sys

_parse = ast.parse


def _parse_or_syntax_error(*args, **kwargs):
    try:
        return _parse(*args, **kwargs)
    except SystemError as e:
        if "recursion depth mismatch" not in str(e):
            raise
        raise SyntaxError(str(e)) from e


ast.parse = _parse_or_syntax_error

from schemathesis.cli import schemathesis  # noqa: E402  (after the patch, on purpose)

sys.exit(schemathesis())
