"""Fixtures for the prepare tests: a bad-input corpus processed once per module."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from prepare_corpus import build_corpus, run_cli, tree_digest


@dataclass
class CorpusRun:
    """A corpus, its digest before the run, and the CLI result."""

    root: Path
    out: Path
    expect: dict
    before: dict
    exit_code: int
    output: str

    def manifest(self) -> dict[str, dict]:
        rows = [json.loads(line) for line in (self.out / "manifest.jsonl").read_text().splitlines() if line]
        return {row["source"]: row for row in rows}

    def rejected(self) -> dict[str, dict]:
        rows = [json.loads(line) for line in (self.out / "rejected.jsonl").read_text().splitlines() if line]
        return {row["source"]: row for row in rows}


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory) -> CorpusRun:
    base = tmp_path_factory.mktemp("corpus")
    root, outside, out = base / "photos", base / "outside", base / "ds"
    root.mkdir()
    outside.mkdir()
    expect = build_corpus(root, outside)
    before = tree_digest(root)
    result = run_cli(["prepare", str(root), "--out", str(out), "--workers", "2", "-q"])
    return CorpusRun(root, out, expect, before, result.exit_code, result.output)
