"""``make secret-scan`` (part of ``make test``) fails on a secret anywhere in a repository's history."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parents[2]


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                   check=True, capture_output=True)


def test_a_key_committed_and_then_removed_fails_the_scan(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (repo / "deploy.pem").write_bytes(key)
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "add a key")
    _git(repo, "rm", "-q", "deploy.pem")
    _git(repo, "commit", "-q", "-m", "remove the key")  # gone from the tree, still in the history

    scan = subprocess.run(["make", "-s", "-C", str(ROOT), "secret-scan", f"SCAN_REPO={repo}"],
                          capture_output=True, text=True, timeout=300)
    assert scan.returncode != 0
    assert "private-key" in scan.stdout + scan.stderr and "deploy.pem" in scan.stdout + scan.stderr
    assert key.decode().splitlines()[1] not in scan.stdout + scan.stderr  # --redact

    clean = tmp_path / "clean"
    _git(tmp_path, "init", "-q", str(clean))
    (clean / "README").write_text("nothing to see\n")
    _git(clean, "add", ".")
    _git(clean, "commit", "-q", "-m", "clean")
    assert subprocess.run(["make", "-s", "-C", str(ROOT), "secret-scan", f"SCAN_REPO={clean}"],
                          capture_output=True, text=True, timeout=300).returncode == 0
