"""Print the shell command of one README section: ``main`` (set up and run the main job) or ``test``.

It is the first ```bash block under that section's heading, so .ci/run runs exactly what the README tells a
new user to run."""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
HEADINGS = {"main": "## Set up and run the main job", "test": "## Run the tests"}


def command(which: str, text: str | None = None) -> str:
    text = README.read_text(encoding="utf-8") if text is None else text
    parts = text.split(f"\n{HEADINGS[which]}", 1)
    if len(parts) != 2:
        raise SystemExit(f"README.md has no section {HEADINGS[which]!r}")
    block = re.search(r"```bash\n(.*?)```", parts[1].split("\n## ", 1)[0], flags=re.S)
    if block is None:
        raise SystemExit(f"README.md section {HEADINGS[which]!r} has no ```bash block")
    return block.group(1).strip()


if __name__ == "__main__":
    print(command(sys.argv[1]))
