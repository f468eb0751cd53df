"""Developer tool: freeze SQL files into a new migration's SQL file and print its checksum.

    python -m pyapp._freeze migrations/versions/0003_x.sql sql/40_codegen.sql sql/45_templates.sql

A released revision's frozen file never changes; a change to sql/ goes into a new revision
(the drift test in tests/test_migrations.py fails until it does).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path


def main(target: str, *sources: str) -> None:
    text = "".join(Path(s).read_text(encoding="utf-8") for s in sources)
    Path(target).write_text(text, encoding="utf-8")
    print(hashlib.sha256(text.encode("utf-8")).hexdigest())


if __name__ == "__main__":
    main(*sys.argv[1:])
