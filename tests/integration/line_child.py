"""Child process for the line's kill test: run the personalisation line until killed.

Usage: ``python line_child.py CEREMONY_DIR BATCH COUNT OUT_DIR``

Runs :func:`iotid.factory.line.personalise_batch` (not durable: a SIGKILL of this process leaves
the page cache, so what was written survives, as the line documents) and prints ``DONE`` if it
is not killed first. The parent polls ``OUT_DIR/line.jsonl`` and sends SIGKILL mid-batch.
Not covered here: the checks (``test_factory_line.py`` resumes and inspects in the parent).
"""

from __future__ import annotations

import sys
from pathlib import Path

from iotid.factory.line import personalise_batch


def main() -> None:
    directory, batch, count, out = sys.argv[1:5]
    result = personalise_batch(Path(directory), batch, int(count), Path(out))
    print(f"DONE {result.personalised}", flush=True)  # the parent reads it


if __name__ == "__main__":
    main()
