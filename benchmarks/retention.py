"""Which stored results stay: the latest full run's files and those the docs cite."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

#: a results file: ``<date>-<commit>[-quick][-partial][-noaudit][-interrupted]`` (the run id,
#: as ``benchmarks.run`` names it), then ``.json``, or ``-<model>.png`` for its plots
RESULTS_FILE = re.compile(r"(\d{4}-\d{2}-\d{2}-[0-9a-z]+(?:-quick)?(?:-partial)?(?:-noaudit)?"
                          r"(?:-interrupted)?)(?:\.json|-[a-z0-9_]+\.png)")


def citing_pages(root: Path) -> list[Path]:
    """The pages that may cite stored results: docs/, the README and the levers."""
    return [*sorted((root / "docs").rglob("*.md")), root / "README.md",
            root / "benchmarks" / "levers.md"]


def prune_results(results: Path, keep_run: str, pages: Iterable[Path]) -> list[Path]:
    """Delete the results files in ``results`` that are not ``keep_run``'s and whose file
    name or run id no page cites; the deleted paths. Other files are left alone."""
    text = "\n".join(p.read_text() for p in pages if p.is_file())
    removed = []
    for path in sorted(results.iterdir()):
        match = RESULTS_FILE.fullmatch(path.name)
        if not match or match[1] == keep_run or path.name in text:
            continue
        # a run id cited on its own (not as the start of a longer file name) keeps the run
        if re.search(rf"(?<![\w-]){re.escape(match[1])}(?![\w-]|\.\w)", text):
            continue
        path.unlink()
        removed.append(path)
    return removed
