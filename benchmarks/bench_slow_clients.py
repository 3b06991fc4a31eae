"""slow_clients: an agent's statement latency while other clients are slow, idle or leaving.

A ``lakewarden serve`` process on a DuckLake lake with a 10,000-row table. An agent in this
process sends its statements one after another on a keep-alive connection (a point read and a
one-row INSERT, alternating, 10 ms apart), timing each. Phases of a fixed length alternate: a
quiet one, then one with an attack running in its own process (``benchmarks.slow_clients``,
so the attackers do not share a GIL with the agent), quiet again, the next attack, and so on,
for a few rounds. The attacks:

- ``slowloris_head``: 300 connections sending their request head a byte a second, each opened
  again when the server cuts it off (more than ``LAKEWARDEN_MAX_CONNECTIONS``, 256);
- ``slowloris_body``: the same with a whole head, then the body a byte a second;
- ``idle_flood``: 2,000 keep-alive connections that made one request and sit idle, each
  opened again as soon as the server closes it;
- ``leaving_mid_answer``: 2 clients in a loop sending a read with a ~14 MB answer, taking
  4 KB of it and closing the socket;
- ``leaving_slow_read``: 2 clients in a loop sending a read that runs for seconds, leaving
  after 0.3 s.

Per case, the verdict is the ratio of the agent's p99 under the attack to its p99 in the quiet
phases (the median over rounds of each phase's p99; target <= 1.2); a statement that failed
counts as one never answered, so more than 1% of them failing makes the p99 infinite. On a
machine of 2 cores the attack costs CPU wherever it lands, so each attack also runs in a
control phase, aimed at a second ``lakewarden serve`` process (a decoy on its own lake) while
the agent works with the first: attacked / control is what sharing the server with the
attackers costs the agent, beyond sharing the machine. Also reported: p50s, the agent's
failed statements, what the server answered the attackers, and the server's peak RSS,
threads and open files in the phase, with the CPU the server and the attacker used in it.

``--server-src DIR`` runs the server from another source tree (say, an earlier commit's
``src``), to measure the server before a change with the same agent and attackers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks import common
from benchmarks.slow_clients import Usage, raise_fd_limit, usage
from lakewarden.wire import AGENT_HEADER

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.2
# name: (attack in benchmarks.slow_clients, connections or clients)
ATTACKS: dict[str, tuple[str, int]] = {
    "slowloris_head": ("slow_head", 300),
    "slowloris_body": ("slow_body", 300),
    "idle_flood": ("idle_flood", 2000),
    "leaving_mid_answer": ("disconnecting", 2),
    "leaving_slow_read": ("leaving_slow_read", 2),
}
PHASE_S, QUICK_PHASE_S = 8.0, 3.0
ROUNDS, QUICK_ROUNDS = 3, 1
RAMP_S = 1.5  # the attack's connections are open before the agent's window starts
THINK_S = 0.01
ROWS = 10_000
READ = "SELECT * FROM t WHERE id = ?"
WRITE = "INSERT INTO t VALUES (?, 'agent')"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds process ``pid`` has used (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class Phase:
    """One window of the agent's statements, quiet or under one attack."""

    read_s: list[float] = field(default_factory=list)
    write_s: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    peak: Usage | None = None
    server_cpu_s: float = 0.0
    attacker_cpu_s: float = 0.0
    tally: dict[str, object] = field(default_factory=dict)

    @property
    def all_s(self) -> list[float]:
        """Every statement's latency, a failed one as never answered (infinite): an agent
        refused 503 is not served faster."""
        return self.read_s + self.write_s + [math.inf] * sum(self.failures.values())


class Agent:
    """Statements one after another on one keep-alive connection, each timed."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, headers={AGENT_HEADER: "agent"}, timeout=60)
        self.next_id = ROWS

    def window(self, seconds: float, phase: Phase) -> None:
        until = time.monotonic() + seconds
        write = False
        while time.monotonic() < until:
            if write:
                self.next_id += 1
                body = {"sql": WRITE, "params": [self.next_id]}
            else:
                body = {"sql": READ, "params": [self.next_id % ROWS]}
            started = time.perf_counter()
            try:
                response = self.http.post("/v1/sql", json=body)
                took = time.perf_counter() - started
                if response.status_code != 200:
                    phase.failures[str(response.status_code)] += 1
                else:
                    (phase.write_s if write else phase.read_s).append(took)
            except httpx.TransportError as exc:
                phase.failures[type(exc).__name__] += 1
            write = not write
            time.sleep(THINK_S)

    def close(self) -> None:
        self.http.close()


def run_phase(
    url: str, pid: int, agent: Agent, attack: str | None, seconds: float, target: str = ""
) -> Phase:
    """The agent's window on the server at ``url`` (process ``pid``), with ``attack`` aimed
    at ``target`` (default: the same server) when given."""
    phase = Phase()
    samples = [usage(pid)]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            samples.append(usage(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    attacker = None
    if attack is not None:
        name, count = ATTACKS[attack]
        attacker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.slow_clients",
                name,
                target or url,
                str(RAMP_S + seconds + 0.5),
                str(count),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(RAMP_S)
    server_cpu = cpu_s(pid)
    attacker_cpu = cpu_s(attacker.pid) if attacker else 0.0
    agent.window(seconds, phase)
    phase.server_cpu_s = cpu_s(pid) - server_cpu
    if attacker is not None:
        phase.attacker_cpu_s = cpu_s(attacker.pid) - attacker_cpu
        out, _ = attacker.communicate(timeout=120)
        lines = out.strip().splitlines()
        phase.tally = json.loads(lines[-1]) if lines else {"error": "the attacker printed nothing"}
    done.set()
    sampler.join()
    phase.peak = Usage(*(max(getattr(s, f) for s in samples) for f in ("rss", "threads", "fds")))
    return phase


def start_server(lake: Path, server_src: Path | None) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEWARDEN_", "OTEL_"))}
    env["LAKEWARDEN_MAX_ROWS"] = "200000"  # the leaving clients' read answers all its rows
    if server_src is not None:
        env["PYTHONPATH"] = str(server_src)
    command = [sys.executable, "-m", "lakewarden.intake.cli", "serve", "--lake", str(lake)]
    proc = subprocess.Popen(
        [*command, "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the lakewarden server did not start")
        time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _p(samples: Sequence[float], q: float) -> float:
    return common.percentile(samples, q) if samples else float("nan")


def run(quick: bool, server_src: Path | None = None) -> list[common.Outcome]:
    raise_fd_limit(max(count for _, count in ATTACKS.values()) + 1024)
    seconds = QUICK_PHASE_S if quick else PHASE_S
    rounds = QUICK_ROUNDS if quick else ROUNDS
    quiet: list[Phase] = []
    attacked: dict[str, list[Phase]] = {name: [] for name in ATTACKS}
    control: dict[str, list[Phase]] = {name: [] for name in ATTACKS}
    with tempfile.TemporaryDirectory(prefix="lakewarden-bench-") as tmp:
        proc, url = start_server(Path(tmp) / "lake", server_src)
        decoy, decoy_url = start_server(Path(tmp) / "decoy", server_src)
        try:
            seed = {"sql": f"CREATE TABLE t AS SELECT range AS id, 'x' AS v FROM range({ROWS})"}
            httpx.post(f"{url}/v1/sql", json=seed, timeout=60).raise_for_status()
            agent = Agent(url)
            agent.window(2.0, Phase())  # warm-up
            baseline = usage(proc.pid)
            names = list(ATTACKS)
            for r in range(rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    quiet.append(run_phase(url, proc.pid, agent, None, seconds))
                    control[name].append(
                        run_phase(url, proc.pid, agent, name, seconds, target=decoy_url)
                    )
                    attacked[name].append(run_phase(url, proc.pid, agent, name, seconds))
                    print(f"round {r + 1}: {name} done", flush=True)
            agent.close()
        finally:
            for server in (proc, decoy):
                server.terminate()
            for server in (proc, decoy):
                try:
                    server.wait(30)
                except subprocess.TimeoutExpired:
                    server.kill()
    quiet_p99 = [_p(q.all_s, 99) for q in quiet]
    names = list(ATTACKS)
    outcomes = []
    for name, phases in attacked.items():
        under_p99 = [_p(p.all_s, 99) for p in phases]
        # The quiet phase right before each attack phase: the pairs of the paired ratio.
        quiet_for = [quiet_p99[_quiet_before(name, i, names)] for i in range(len(phases))]
        control_p99 = [_p(c.all_s, 99) for c in control[name]]
        under = [x for p in phases for x in p.all_s]
        calm = [x for q in quiet for x in q.all_s]
        failures = sum((p.failures for p in phases), Counter())
        peaks = [p.peak for p in phases if p.peak is not None]
        outcomes.append(
            common.Outcome(
                name=f"slow_clients_{name}",
                baseline=(
                    "p99 of an agent's statements (point read / one-row INSERT, alternating, "
                    f"keep-alive) in a quiet {seconds:g} s phase"
                ),
                subject=f"the same agent's p99 during {name} ({ATTACKS[name][1]:,})",
                baseline_s=quiet_for,
                subject_s=under_p99,
                target=TARGET,
                extra={
                    "p50 / p99 quiet (all phases pooled)": (
                        f"{common.fmt_s(_p(calm, 50))} / {common.fmt_s(_p(calm, 99))}"
                    ),
                    "p99 with the attack aimed at the decoy server (median of phases); "
                    "attacked / control": (
                        f"{common.fmt_s(statistics.median(control_p99))}; "
                        f"{statistics.median(under_p99) / statistics.median(control_p99):.2f}"
                    ),
                    "p50 / p99 under attack (pooled)": (
                        f"{common.fmt_s(_p(under, 50))} / {common.fmt_s(_p(under, 99))}"
                    ),
                    "reads p50 / p99; writes p50 / p99 under attack": (
                        f"{_pair([x for p in phases for x in p.read_s])}; "
                        f"{_pair([x for p in phases for x in p.write_s])}"
                    ),
                    "agent statements answered / failed under attack": (
                        f"{sum(len(p.read_s) + len(p.write_s) for p in phases)} / "
                        f"{sum(failures.values())} {dict(failures)}"
                    ),
                    "server before the runs; peak RSS, threads, open files in the phases": (
                        f"{baseline.rss / 2**20:.0f} MB, {baseline.threads}, {baseline.fds}; "
                        f"{max(p.rss for p in peaks) / 2**20:.0f} MB, "
                        f"{max(p.threads for p in peaks)}, {max(p.fds for p in peaks)}"
                    ),
                    "CPU per phase, server / attacker": (
                        f"{statistics.mean(p.server_cpu_s for p in phases):.1f} s / "
                        f"{statistics.mean(p.attacker_cpu_s for p in phases):.1f} s "
                        f"(quiet: server {statistics.mean(q.server_cpu_s for q in quiet):.1f} s)"
                    ),
                    "what the attackers got (last round)": json.dumps(phases[-1].tally),
                },
            )
        )
    return outcomes


def _quiet_before(name: str, i: int, names: list[str]) -> int:
    """The index of the quiet phase run right before attack ``name``'s ``i``-th phase."""
    shift = i % len(names)
    order = names[shift:] + names[:shift]
    return i * len(names) + order.index(name)


def _pair(samples: Sequence[float]) -> str:
    return f"{common.fmt_s(_p(samples, 50))} / {common.fmt_s(_p(samples, 99))}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short phases, one round")
    parser.add_argument(
        "--server-src", type=Path, help="run the server from this source tree (its src/)"
    )
    args = parser.parse_args(argv)
    print(f"machine: {common.machine()}; load before: {common.load()}", flush=True)
    outcomes = run(args.quick, args.server_src)
    for outcome in outcomes:
        print(outcome.report(), flush=True)
    print(f"load after: {common.load()}")
    return common.exit_code(outcomes, args.quick)


if __name__ == "__main__":
    raise SystemExit(main())
