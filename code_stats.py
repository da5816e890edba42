"""
Size and comment density of the project's core files, as RESULTS.md reports them.

    python code_stats.py                 # the seven core files
    python code_stats.py data.py bench.py

It reads each file with Python's own `tokenize`, so that a '#' inside a string is not a comment and a docstring
spanning ten lines counts as ten documented lines. For each file it counts:
  lines      every line of the file
  code       lines that hold code, not counting blank lines, comment-only lines and docstring lines
  commented  lines that carry a comment (alone or after code) or belong to a docstring
  ratio      commented / code: how much prose the reader gets per line of code
"""
import argparse
import ast
import io
import tokenize

CORE = ["musicgen.py", "encodec_lite.py", "spectral_codec.py", "t5_encoder.py", "chroma.py", "train.py",
        "training_loop.py", "sample.py"]


def docstring_lines(source):
    """Line numbers of every docstring: a string that stands as a statement of its own (module, class, function)."""
    lines = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            lines.update(range(node.lineno, node.end_lineno + 1))
    return lines


def count(path):
    """{'lines', 'code', 'commented'} for one Python file."""
    with open(path, encoding="utf-8") as file:
        source = file.read()
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    docs = docstring_lines(source)
    comments = {token.start[0] for token in tokens if token.type == tokenize.COMMENT}
    # A line holds code when a token other than a comment, a docstring or layout starts or continues on it.
    layout = (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT,
              tokenize.ENDMARKER)
    code = set()
    for token in tokens:
        if token.type in layout:
            continue
        code.update(range(token.start[0], token.end[0] + 1))
    code -= docs
    return {"lines": source.count("\n"), "code": len(code), "commented": len(comments | docs)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("files", nargs="*", default=CORE, help="Python files to count (default: the core files)")
    args = parser.parse_args()
    total = {"lines": 0, "code": 0, "commented": 0}
    print(f"{'file':<20} {'lines':>6} {'code':>6} {'commented':>10} {'ratio':>6}")
    for path in args.files:
        stats = count(path)
        for key in total:
            total[key] += stats[key]
        print(f"{path:<20} {stats['lines']:>6} {stats['code']:>6} {stats['commented']:>10} "
              f"{stats['commented'] / max(stats['code'], 1):>6.2f}")
    print(f"{'total':<20} {total['lines']:>6} {total['code']:>6} {total['commented']:>10} "
          f"{total['commented'] / max(total['code'], 1):>6.2f}")


if __name__ == "__main__":
    main()
