"""`lakewarden init` and the files a lake folder holds beside the lake (policy.yaml, tokens.env)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import lakewarden
from lakewarden.errors import ConfigurationError
from lakewarden.governance.policy import load_policy
from lakewarden.intake import lakefiles


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LW_", "LAKEWARDEN_"))}
    return subprocess.run(
        [sys.executable, "-m", "lakewarden.intake.cli", *args],
        cwd=cwd,
        env={**base, "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_init_makes_a_lake_a_policy_and_private_tokens(tmp_path: Path) -> None:
    done = cli("init", "lake", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lake = tmp_path / "lake"
    tokens = lake / "tokens.env"
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    values = lakefiles.read_tokens(tokens)
    policy = load_policy(lake / "policy.yaml")
    # every token the policy names is generated, distinct and long; the CLI's is the admin's
    named = {a.token_env for a in policy.agents.values()}
    assert named <= set(values)
    assert len({values[n] for n in named}) == len(named)
    assert all(len(values[n]) >= 32 for n in named)
    assert values["LAKEWARDEN_TOKEN"] == values[policy.agents["admin"].token_env]
    assert policy.can_restore("admin") and policy.agents["admin"].ddl
    # the lake itself exists and opens; the next commands are printed
    with lakewarden.open(lake) as warden:
        assert warden.engine.location.is_lake
    assert "lakewarden serve --lake lake" in done.stdout
    assert ". lake/tokens.env" in done.stdout
    assert "curl -s localhost:7117/v1/sql" in done.stdout


@pytest.mark.parametrize(
    "existing", ["file", "nonempty"], ids=["a-file-of-that-name", "a-folder-with-content"]
)
def test_init_never_overwrites(tmp_path: Path, existing: str) -> None:
    target = tmp_path / "lake"
    if existing == "file":
        target.write_text("precious")
    else:
        target.mkdir()
        (target / "meta.ducklake").write_text("precious")
    done = cli("init", "lake", cwd=tmp_path, env={"COLUMNS": "80"})
    assert done.returncode == 2
    # one line, not hard-wrapped at 80 columns, though stderr is a pipe here
    assert "already exists and is not empty; give a new folder to lakewarden init" in done.stderr
    kept = target if existing == "file" else target / "meta.ducklake"
    assert kept.read_text() == "precious"


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.env"
    tokens.write_text("LW_TOKEN_X=secret\n")
    tokens.chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        lakefiles.read_tokens(tokens)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A=1\n# comment\n\nexport B='two'\n", {"A": "1", "B": "two"}),
        ('C="three"\n', {"C": "three"}),
    ],
    ids=["plain-export-comment", "double-quoted"],
)
def test_token_file_lines(tmp_path: Path, text: str, expected: dict[str, str]) -> None:
    tokens = tmp_path / "tokens.env"
    tokens.write_text(text)
    tokens.chmod(0o600)
    assert lakefiles.read_tokens(tokens) == expected


def test_a_malformed_token_file_names_its_line(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.env"
    tokens.write_text("A=1\nnot a line\n")
    tokens.chmod(0o600)
    with pytest.raises(ConfigurationError, match=r"tokens.env:2"):
        lakefiles.read_tokens(tokens)


def test_commands_use_the_lake_folders_policy(tmp_path: Path) -> None:
    assert cli("init", "lake", cwd=tmp_path).returncode == 0
    # the folder's policy has a contract on orders: check shows its rules without --policy
    lake = tmp_path / "lake"
    with lakewarden.open(lake, policy=lake / "policy.yaml") as warden, warden.session("admin") as s:
        s.sql("CREATE TABLE orders (order_id BIGINT, email VARCHAR, updated_at TIMESTAMP)")
    done = cli("check", "orders", "--lake", "lake", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert '"null_ratio:email"' in done.stdout
    # an explicit --policy wins over the folder's
    other = tmp_path / "other.yaml"
    other.write_text("version: 1\nagents: {a: {read: ['*']}}\n")
    done = cli("check", "orders", "--lake", "lake", "--policy", str(other), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert '"null_ratio:email"' not in done.stdout


def test_policy_validate_counts_tokens_from_the_lake_folder(tmp_path: Path) -> None:
    assert cli("init", "lake", cwd=tmp_path).returncode == 0
    done = cli("policy", "validate", "lake/policy.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "3 agents, 1 table contract)" in done.stdout  # singular when it is one
    assert "not set" not in done.stdout
