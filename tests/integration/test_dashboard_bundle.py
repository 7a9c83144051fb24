"""The dashboard's committed script is what its sources build to: ``npm ci && npm run build`` in a copy of
``frontend/`` (the pinned packages from the npm registry) gives the committed bytes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = Path("plugins/citibikes_airflow/dashboard/static/dashboard.js")


def test_the_committed_bundle_is_built_from_the_sources(tmp_path: Path) -> None:
    npm = shutil.which("npm")
    assert npm, "no npm: install Node.js (20+) to build the dashboard's script"
    shutil.copytree(ROOT / "frontend", tmp_path / "frontend", ignore=shutil.ignore_patterns("node_modules"))
    (tmp_path / BUNDLE).parent.mkdir(parents=True)
    for step in (["ci", "--no-audit", "--no-fund"], ["run", "build"]):
        done = subprocess.run([npm, *step], cwd=tmp_path / "frontend", capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (tmp_path / BUNDLE).read_bytes() == (ROOT / BUNDLE).read_bytes(), \
        "the committed bundle is stale: cd frontend && npm ci && npm run build, then commit it"
