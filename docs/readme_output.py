"""Regenerate the README's quoted output from a real run of the current code.

    .venv/bin/python docs/readme_output.py [--workdir DIR]

Runs the quickstart search in a fresh folder as `make search` does, confirms its likeliest front
configuration on fresh seeds, promotes by the README's rule, evaluates the promoted model, tries a
second promotion through the gate (forcing it where the gate refuses), rolls it back, prints the history, and writes
each command's output into the README block marked `<!-- output: NAME -->` (quickstart, confirm,
promote, evaluate, challenger, history); copies the front's plots to docs/. The
progress lines of the search are cut in the middle. Prints each command's wall time.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXPERIMENT = "sparse-shape-search-quickstart"
MODEL = f"models:/sparse-resnet18-{EXPERIMENT}@production"
PROMOTE = ["promote", "--experiment", EXPERIMENT, "--maximize", "shape_bias", "--floor", "accuracy=dense-0.05", "--yes"]
EVALUATE = ["evaluate", "--model", MODEL]
CONFIRM = ["confirm", "--experiment", EXPERIMENT, "--top", "1", "--seeds", "3"]
NAME = f"sparse-resnet18-{EXPERIMENT}"
CHALLENGER = ["promote", "--experiment", EXPERIMENT, "--maximize", "accuracy", "--yes", "--reason", "more accurate"]
FORCED = [*CHALLENGER[:-1], "accuracy matters more here", "--force"]
ROLLBACK = ["rollback", "--model-name", NAME, "--reason", "canary answered worse"]
HISTORY = ["history", "--model-name", NAME]


def run(args: list[str], workdir: Path, with_stderr: bool = False, refusal_ok: bool = False) -> tuple[str, float]:
    """`run_search.py ARGS` in `workdir`: its stdout (and stderr: `with_stderr`, or on failure) and wall seconds."""
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, str(ROOT / "run_search.py"), *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    elapsed = time.monotonic() - start
    if out.returncode != 0 and not (refusal_ok and out.returncode == 2):
        sys.exit(f"run_search.py {' '.join(args)} failed ({out.returncode}):\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    return out.stdout + (out.stderr if with_stderr else ""), elapsed


def cut_progress(text: str, head: int = 4, tail: int = 3) -> str:
    """The search's output with its progress lines cut to the first and last few."""
    lines = text.rstrip("\n").splitlines()
    progress = [i for i, line in enumerate(lines) if line.startswith("[")]
    if len(progress) <= head + tail:
        return "\n".join(lines)
    keep = set(progress[:head] + progress[-tail:])
    out, cut = [], False
    for i, line in enumerate(lines):
        if i in progress and i not in keep:
            if not cut:
                out.append("...")
            cut = True
            continue
        out.append(line)
    return "\n".join(out)


def replace_block(readme: str, name: str, text: str) -> str:
    """The README with the fenced block after `<!-- output: NAME -->` holding `text`."""
    # The closing fence is the first line that is only ``` (an empty block included).
    pattern = re.compile(rf"(<!-- output: {name} -->\n```\n)(.*?)(^```$)", re.DOTALL | re.MULTILINE)
    if not pattern.search(readme):
        sys.exit(f"README.md has no block marked <!-- output: {name} -->")
    return pattern.sub(lambda m: m.group(1) + text.rstrip("\n") + "\n" + m.group(3), readme, count=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="an empty folder to run in (default: a new temporary one)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="quickstart-"))
    workdir.mkdir(parents=True, exist_ok=True)
    search, search_s = run(["search", "--config", str(ROOT / "search_spaces" / "quickstart.yaml")], workdir)
    confirm, confirm_s = run(CONFIRM, workdir)
    # Its one-line warning (stderr) when the configuration was never confirmed is part of what it says.
    promote, promote_s = run(PROMOTE, workdir, with_stderr=True)
    evaluate, evaluate_s = run(EVALUATE, workdir)
    # The gate decides: a refusal (exit 2, one line) is as much the README's output as a promotion.
    challenger, challenger_s = run(CHALLENGER, workdir, with_stderr=True, refusal_ok=True)
    if "registered " not in challenger:  # refused: then forced past the gate, as a team may decide to
        forced, _ = run(FORCED, workdir)
        challenger += (
            f"$ .venv/bin/python run_search.py {shlex.join(FORCED)}\n"
            + "\n".join(
                line
                for line in forced.splitlines()
                if not line.startswith("  ") or "gate skipped" in line  # the choice: printed above
            )
            + "\n"
        )
    rolled = "$ .venv/bin/python run_search.py " + shlex.join(ROLLBACK) + "\n" + run(ROLLBACK, workdir)[0]
    history, _ = run(HISTORY, workdir)
    print(
        f"search {search_s:.0f} s, confirm {confirm_s:.0f} s, promote {promote_s:.1f} s, evaluate {evaluate_s:.1f} s, "
        f"gated promote {challenger_s:.1f} s (in {workdir})"
    )

    command = "$ .venv/bin/python run_search.py "
    readme = README.read_text()
    readme = replace_block(readme, "quickstart", cut_progress(search))
    readme = replace_block(readme, "confirm", f"{command}{' '.join(CONFIRM)}\n{cut_progress(confirm, 2, 1)}")
    promote_line = f"{command}{' '.join(PROMOTE[:5])} \\\n      {' '.join(PROMOTE[5:])}\n"
    readme = replace_block(readme, "promote", promote_line + promote)
    readme = replace_block(readme, "evaluate", f"{command}{' '.join(EVALUATE)}\n{evaluate}")
    readme = replace_block(readme, "challenger", f"{command}{shlex.join(CHALLENGER)}\n{challenger}{rolled}")
    readme = replace_block(readme, "history", f"{command}{' '.join(HISTORY)}\n{history}")
    README.write_text(readme)
    search_id = re.search(r"^search (\S+):", search, re.MULTILINE)
    if search_id:
        for suffix, target in (("", "pareto_quickstart.png"), ("-categories", "categories_quickstart.png")):
            plot = workdir / f"pareto-{search_id.group(1)}{suffix}.png"
            if plot.is_file():
                shutil.copy(plot, ROOT / "docs" / target)
    print("README.md's quoted output and docs/*_quickstart.png regenerated")


if __name__ == "__main__":
    main()
