"""The benchmark's results folder keeps the latest full run and what the docs cite."""

from __future__ import annotations

from pathlib import Path

from benchmarks.retention import citing_pages, prune_results

LATEST = "2026-12-02-57afd96"


def run_files(run: str) -> list[str]:
    return [f"{run}.json", *(f"{run}-{m}.png" for m in ("sentiment", "fraud", "credit"))]


def test_prune_keeps_the_latest_full_run_and_cited_files(tmp_path: Path) -> None:
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    names = [*run_files(LATEST),                 # the run just made
             *run_files("2026-12-02-0838abc"),   # its JSON named in the generated page
             *run_files("2026-11-23-4d07ec5"),   # cited by run id in the levers
             *run_files(f"{LATEST}-quick"),      # same commit and day, but a quick run
             *run_files("2026-11-23-7e041a6"),   # not cited at all
             "2026-11-23-dc1f05e-quick-partial-noaudit.json",
             "2026-11-20-aaaaaaa-fraud.png",     # plots whose JSON is gone
             "notes.txt"]                        # not a results file
    for name in names:
        (results / name).write_text(name)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "benchmarks.md").write_text(
        f"raw results `benchmarks/results/{LATEST}.json`\n"
        f"![{LATEST}-fraud](../benchmarks/results/{LATEST}-fraud.png)\n"
        "| `2026-12-02-0838abc.json` | full |\n"
        "| `2026-11-23-dc1f05e-quick-partial-noaudit.json` | quick |\n")
    (tmp_path / "benchmarks" / "levers.md").write_text("measured in run 2026-11-23-4d07ec5.\n")

    removed = prune_results(results, LATEST, citing_pages(tmp_path))

    kept = {*run_files(LATEST), "2026-12-02-0838abc.json", *run_files("2026-11-23-4d07ec5"),
            "2026-11-23-dc1f05e-quick-partial-noaudit.json", "notes.txt"}
    assert {p.name for p in results.iterdir()} == kept
    assert {p.name for p in removed} == set(names) - kept


def test_prune_without_pages_keeps_only_the_latest_run(tmp_path: Path) -> None:
    for name in [*run_files(LATEST), *run_files("2026-11-23-7e041a6")]:
        (tmp_path / name).write_text(name)

    prune_results(tmp_path, LATEST, [tmp_path / "missing.md"])

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(run_files(LATEST))
