"""The Graphviz bundled with pygraphviz, as a program: DOT on standard input, the drawing
(-T FORMAT) on standard output, errors on standard error and a non-zero status.

diagram.render runs this file in a child process (`python -I -S graphviz_child.py FORMAT DIR`)
rather than calling libgvc in its own: a layout that runs too long can then be stopped,
and a crash inside the C library ends the child, not the caller. It imports nothing of
cnndsl, nor the site module (-S), and so starts in 50-90 ms, most of it loading the
libraries of pygraphviz's wheel; DIR is where the caller found pygraphviz, since -I -S
leave PYTHONPATH and site-packages out (and the current folder, which could shadow a module).
"""

import sys


def main() -> int:
    fmt, location = sys.argv[1], sys.argv[2]
    sys.path.insert(0, location)
    import pygraphviz

    text = sys.stdin.buffer.read().decode()
    try:
        data = pygraphviz.AGraph(string=text).draw(format=fmt, prog="dot")
    except (pygraphviz.DotError, ValueError) as exc:
        print(str(exc).strip() or type(exc).__name__, file=sys.stderr)
        return 1
    sys.stdout.buffer.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
