"""The README runs verbatim: its blocks are extracted and executed exactly as printed.

- the two set-up commands are the ones `.ci/run` executes (CI runs them in fresh venvs),
- the tour (a ``pycon`` block) runs as a doctest, so its printed results are true,
- the policy example validates,
- the sidecar walk-through (``console`` blocks: ``$ command`` lines, then the expected output,
  where ``...`` matches anything) runs in one shell against a real server on the README's port.
"""

from __future__ import annotations

import doctest
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from lakewarden.governance.policy import parse_policy

from server_helpers import wait_ready

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
BLOCKS = [
    (m.group(1), m.group(2), README[: m.start()].count("\n") + 1) for m in BLOCK.finditer(README)
]


def blocks(kind: str, before: str | None = None) -> list[tuple[str, int]]:
    """The README's ``kind`` blocks (text, line), optionally only those above a heading."""
    limit = README.index(before) if before else len(README)
    limit_line = README[:limit].count("\n") + 1
    return [(text, line) for k, text, line in BLOCKS if k == kind and line < limit_line]


def console_commands(text: str) -> list[tuple[str, list[str]]]:
    """``$ command`` lines (``\\`` continuations joined) with the output lines printed below."""
    out: list[tuple[str, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\"):  # kept as printed: bash joins the lines itself
                i += 1
                command += "\n" + lines[i]
            out.append((command, []))
        else:
            out[-1][1].append(line)
        i += 1
    return out


def matches(expected: list[str], actual: str) -> bool:
    """``...`` in the expected text matches any text (doctest's ELLIPSIS, across lines)."""
    if not expected:
        return True
    pattern = ".*".join(re.escape(part) for part in "\n".join(expected).split("..."))
    return re.fullmatch(pattern, actual.strip(), re.S) is not None


def test_setup_commands_are_the_ones_ci_runs() -> None:
    (setup, _), *_ = blocks("bash", before="## Why")
    commands = [line.split("  #")[0].strip() for line in setup.splitlines() if line.strip()]
    assert len(commands) == 2, "the README's first screen gives exactly two set-up commands"
    install, tests = commands
    assert install == "pip install . && lakewarden demo"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert tests in ci.splitlines(), "CI must run the README's test command verbatim"
    assert "pip install . >/dev/null && timeout --preserve-status -s INT 20 lakewarden demo" in ci
    assert "lakewarden demo --duration 15" in ci


def test_the_tour_prints_what_it_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [(tour, line)] = blocks("pycon")
    monkeypatch.chdir(tmp_path)
    test = doctest.DocTestParser().get_doctest(tour, {}, "README tour", "README.md", line)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    failures: list[str] = []
    runner.run(test, out=failures.append)
    assert runner.failures == 0, "".join(failures)


def test_the_policy_example_is_valid() -> None:
    examples = blocks("yaml")
    assert examples
    for text, line in examples:
        policy = parse_policy(text, f"README.md:{line}")
        assert policy.agents and policy.tables


@pytest.mark.slow
def test_the_sidecar_walkthrough_runs_verbatim(tmp_path: Path) -> None:
    section = README[README.index("## The sidecar") : README.index("One port serves")]
    commands = [
        command
        for m in BLOCK.finditer(section)
        if m.group(1) == "console"
        for command in console_commands(m.group(2))
    ]
    serve = [c for c in commands if c[0].startswith("lakewarden serve")]
    assert len(serve) == 1
    rest = [c for c in commands if c not in serve]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LW_", "LAKEWARDEN_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "120"
    with httpx.Client(timeout=2) as http:
        try:
            http.get("http://127.0.0.1:7117/healthz")
            pytest.fail("something already listens on 127.0.0.1:7117, the README's port")
        except httpx.TransportError:
            pass
    init, *shell = rest
    done = subprocess.run(
        ["bash", "-c", init[0]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert matches(init[1], done.stdout)
    server = subprocess.Popen(
        ["bash", "-c", serve[0][0]],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_ready("http://127.0.0.1:7117", server)
        outputs = _run_in_one_shell([c for c, _ in shell], tmp_path, env)
        for (command, expected), (code, output) in zip(shell, outputs, strict=True):
            assert code == 0, f"{command!r} exited {code}:\n{output}"
            assert matches(expected, output), f"{command!r} printed:\n{output}"
    finally:
        server.send_signal(signal.SIGTERM)
        log, _ = server.communicate(timeout=30)
    assert server.returncode == 0, log
    assert "policy lake/policy.yaml" in log


def _run_in_one_shell(commands: list[str], cwd: Path, env: dict[str, str]) -> list[tuple[int, str]]:
    """Run the commands in ONE bash (so `. lake/tokens.env` carries over), each one's exit code
    and output separated by a marker line."""
    marker = "--- lakewarden readme marker"
    script = "".join(f'{c}\necho; echo "{marker} $?"\n' for c in commands)
    assert shutil.which("bash")
    done = subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    parts = done.stdout.split(marker)
    results = []
    for i in range(len(commands)):
        head, _, _ = parts[i + 1].partition("\n")
        code = int(head.strip())
        output = parts[i] if i == 0 else parts[i].partition("\n")[2]
        results.append((code, output.strip() + ("\n" + done.stderr if code else "")))
    return results
