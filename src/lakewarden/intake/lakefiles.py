"""The files a lake folder may hold beside the lake: ``policy.yaml`` and ``tokens.env``.

``lakewarden init DIR`` writes both; every command given ``--lake DIR`` then uses them when it is
not told otherwise: the policy when neither ``--policy`` nor ``LAKEWARDEN_POLICY`` is given, the
tokens for variables that are not already set in the environment (the server's ``token_env``
variables, the CLI's ``LAKEWARDEN_TOKEN``). The engine never reaches them: it may touch the lake's
``data/`` folder only (see ``store/engine.py``).
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from lakewarden.errors import ConfigurationError
from lakewarden.settings import ENV_TOKEN

POLICY_FILE = "policy.yaml"
TOKEN_FILE = "tokens.env"
CLI_TOKEN = ENV_TOKEN

_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def folder_of(lake: Path | str | None) -> Path | None:
    """The lake folder, or None for a plain ``.duckdb`` file or a remote catalog."""
    if lake is None:
        return None
    path = Path(lake)
    return path if path.is_dir() else None


def policy_for(lake: Path | str | None, given: Path | None) -> Path | None:
    """The policy to use: the one given, else the lake folder's ``policy.yaml`` if present."""
    if given is not None:
        return given
    folder = folder_of(lake)
    if folder is not None and (folder / POLICY_FILE).is_file():
        return folder / POLICY_FILE
    return None


def read_tokens(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of a token file; refused when others may read it (like ssh keys)."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigurationError(
            f"{path} holds bearer tokens but is readable by other users "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
        )
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise ConfigurationError(
                f"{path}:{number}: expected NAME=value, got {line[:40]!r}",
            )
        values[match.group(1)] = match.group(2).strip().strip("'\"")
    return values


def lake_tokens(lake: Path | str | None) -> dict[str, str]:
    """The lake folder's tokens (empty when it has no token file)."""
    folder = folder_of(lake)
    if folder is None or not (folder / TOKEN_FILE).is_file():
        return {}
    return read_tokens(folder / TOKEN_FILE)


def export_lake_tokens(lake: Path | str | None) -> list[str]:
    """Put the lake's tokens into the environment where unset; return the names set."""
    added = []
    for name, value in lake_tokens(lake).items():
        if not os.environ.get(name):
            os.environ[name] = value
            added.append(name)
    return added


def cli_token(lake: Path | str | None, given: str | None) -> str | None:
    """The CLI's bearer token: ``--token``/``LAKEWARDEN_TOKEN``, else the lake's token file."""
    return given or lake_tokens(lake).get(CLI_TOKEN)


EXAMPLE_POLICY = """\
# lakewarden policy for this lake (check it with: lakewarden policy validate {policy}).
# Each agent proves who it is with a bearer token read from the variable named by token_env;
# {tokens} (mode 0600) holds generated ones for every variable not set in the environment.
version: 1
mode: enforce                 # observe: record only | warn: allow and flag | enforce: refuse
restore: [admin]              # agents that may restore a table to an earlier snapshot
agents:
  admin:                      # operators and the lakewarden CLI: everything, DDL included
    token_env: LW_TOKEN_ADMIN
    read: ["*"]
    write: ["*"]
    ddl: true
  etl-agent:                  # a pipeline that loads orders; no DDL
    token_env: LW_TOKEN_ETL
    read: ["*"]
    write: [orders, "staging.*"]
    max_rows: 10000
    timeout_s: 10
  analyst:                    # reads only, at most 1,000 rows per answer
    token_env: LW_TOKEN_ANALYST
    read: ["*"]
    max_rows: 1000
    timeout_s: 30
tables:                       # data contracts, judged before every write commits
  orders:
    event_time: updated_at    # freshness from this column as well as from commit times
    freshness_sla: 1h
    schema: additive          # locked | additive | free
    volume: {{max_rows_per_write: 100000, max_delete_ratio: 0.1}}
    columns:
      order_id: {{type: BIGINT, nullable: false}}
      email: {{max_null_ratio: 0.05}}
"""

TOKEN_VARIABLES = {
    "admin": "LW_TOKEN_ADMIN",
    "etl-agent": "LW_TOKEN_ETL",
    "analyst": "LW_TOKEN_ANALYST",
}


@dataclass(frozen=True)
class Initialised:
    lake: Path
    policy: Path
    tokens: Path


def init(directory: Path) -> Initialised:
    """Create a lake in ``directory`` with an example policy and generated tokens.

    Refuses a folder that already holds anything, so it never overwrites a lake or its secrets.
    """
    import lakewarden

    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ConfigurationError(
            f"{directory} already exists and is not empty; give a new folder to lakewarden init"
        )
    directory.mkdir(parents=True, exist_ok=True)
    policy = directory / POLICY_FILE
    tokens = directory / TOKEN_FILE
    policy.write_text(EXAMPLE_POLICY.format(policy=policy, tokens=tokens), encoding="utf-8")
    values = {var: secrets.token_urlsafe(32) for var in TOKEN_VARIABLES.values()}
    # Created 0600 from the start: the secrets are never readable by others, not even briefly.
    fd = os.open(tokens, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(f"# Bearer tokens for {directory}: keep this file private (mode 0600).\n")
        out.write("# `. " + str(tokens) + "` makes them shell variables (for curl).\n")
        for agent, var in TOKEN_VARIABLES.items():
            out.write(f"# {agent}\n{var}={values[var]}\n")
        out.write("# the lakewarden CLI asks a running server with this one (admin's)\n")
        out.write(f"{CLI_TOKEN}={values['LW_TOKEN_ADMIN']}\n")
    lakewarden.open(directory).close()  # the lake itself: catalog, data folder, state
    return Initialised(lake=directory, policy=policy, tokens=tokens)
