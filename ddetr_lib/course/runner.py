"""Run the course notebooks top to bottom in fresh kernels, time them, render them to HTML.

    python -m ddetr_lib.course.runner --scale smoke              # every notebook, quickly
    python -m ddetr_lib.course.runner --scale learner 06 07      # some notebooks, full size
    python -m ddetr_lib.course.runner --scale learner --html outputs/html   # `make html`

Each notebook runs in a new kernel started in ``notebooks/`` with ``COURSE_SCALE`` set,
as a learner's "Restart kernel and run all" would. ``--times FILE`` writes the measured
seconds per notebook as JSON (the table in ``notebooks/README.md`` comes from it).
The test suite uses :func:`run_notebook` at smoke scale.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"


def course_notebooks() -> list[Path]:
    """The notebooks of the course in order (``NN_topic.ipynb``, then ``explore.ipynb``)."""
    numbered = sorted(p for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    extra = [p for p in (NOTEBOOK_DIR / "explore.ipynb",) if p.exists()]
    return numbered + extra


@contextmanager
def _environment(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_notebook(path: str | os.PathLike, scale: str = "smoke", timeout: int = 600):
    """Execute one notebook in a fresh kernel; return ``(executed notebook, seconds)``.

    Raises ``nbclient.exceptions.CellExecutionError`` (with the failing cell and its
    traceback) when a cell fails.
    """
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name=nb.metadata.get("kernelspec", {}).get("name", "python3"),
                            resources={"metadata": {"path": str(path.parent)}})
    # The kernel inherits this environment: the scale switch, and the rule that the
    # repository root never lands on sys.path (so `kernels/` never shadows anything).
    with _environment(COURSE_SCALE=scale, PYTHONSAFEPATH="1", PYDEVD_DISABLE_FILE_VALIDATION="1"):
        start = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - start
    return nb, seconds


def to_html(nb, out_file: Path) -> None:
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nb)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(body, encoding="utf-8")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("notebooks", nargs="*", help="notebook files or their number prefixes (default: all)")
    p.add_argument("--scale", default="smoke", choices=("learner", "smoke"))
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    p.add_argument("--html", type=Path, default=None, help="also render each executed notebook to DIR/NAME.html")
    p.add_argument("--times", type=Path, default=None, help="write {notebook: seconds} as JSON")
    args = p.parse_args(argv)

    paths = course_notebooks()
    if args.notebooks:
        chosen = []
        for want in args.notebooks:
            hits = [q for q in paths if q.name == Path(want).name or q.name.startswith(want)]
            if not hits:
                p.error(f"no notebook matches {want!r} in {NOTEBOOK_DIR}")
            chosen += hits
        paths = chosen
    times, failed = {}, []
    for path in paths:
        print(f"{path.name} ({args.scale}) ...", end=" ", flush=True)
        try:
            nb, seconds = run_notebook(path, args.scale, args.timeout)
        except Exception as exc:  # report every notebook, then fail
            print(f"FAILED: {str(exc).splitlines()[-1] if str(exc) else type(exc).__name__}")
            failed.append(path.name)
            continue
        times[path.name] = round(seconds, 1)
        print(f"{seconds:.1f} s")
        if args.html:
            to_html(nb, args.html / f"{path.stem}.html")
    if args.times:
        args.times.write_text(json.dumps({"scale": args.scale, "seconds": times}, indent=2) + "\n")
    if failed:
        print("failed:", ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
