"""Count the package's code lines: non-blank, non-comment, non-docstring, the simulator aside.

Usage: python scripts/count_code_lines.py [PACKAGE_DIR]   (default: airflow_octopusx of this checkout)

Prints each module's count and the total; issue 21's size goal is measured with it.
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "airflow_octopusx"
LEFT_OUT = ("simulator",)


def docstring_lines(tree: ast.AST) -> set[int]:
    """Line numbers of every module, class and function docstring."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        first = node.body[0] if node.body else None
        if (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
        ):
            lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def code_lines(source: str) -> int:
    """Lines holding a token other than a comment, outside docstrings."""
    skipped = docstring_lines(ast.parse(source))
    counted: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (
            tokenize.COMMENT,
            tokenize.NL,
            tokenize.NEWLINE,
            tokenize.INDENT,
            tokenize.DEDENT,
            tokenize.ENDMARKER,
        ):
            continue
        for line in range(token.start[0], token.end[0] + 1):
            if line not in skipped:
                counted.add(line)
    return len(counted)


def main() -> int:
    package = Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE
    total = 0
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if relative.parts[0] in LEFT_OUT:
            continue
        count = code_lines(path.read_text(encoding="utf-8"))
        total += count
        print(f"{count:6d}  {relative}")
    print(f"{total:6d}  total ({package.name}, {', '.join(LEFT_OUT)} aside)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
