"""Chaos for the launchers' tests: a grid killed at random moments aimed at its phases, rerun after each kill,
then compared with the same grid trained without a fault.

The phases are observed, not provoked: the harness watches the work directory (a checkpoint's temporary
file, final weights, run locks), the MLflow store (read-only SQLite queries: runs, tags, the latest
`val.top1` step) and the command's output (its summary line before the report), and kills the command's
process group when the phase it aims at is under way. A kill counts for a phase only if the state it left
shows it landed there (a temporary file left half-written, an epoch checkpointed but not logged, a teacher
finished with no student started, no report written).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import kdgrid_command, kdgrid_env
from trainer import numerics, tracking, workdir

REQUIRED = ("checkpoint write", "MLflow logging", "between teacher and students", "report")
# Measurements of the process that ran an epoch, not numbers of the run: they differ between any two runs.
MEASURED = ("cost.", "eval_time_s", "memory.", "throughput.", "system/")
# Logged once per start of a run (the CPU a set-up spent): a run started twice at one epoch logs it twice.
PER_START = ("cost.setup_cpu_s",)


# ---------------------------------------------------------------------------------------------------
# Watching the store and the work directory
# ---------------------------------------------------------------------------------------------------
@dataclass
class Row:
    run_id: str
    status: str
    numerics: str | None  # the kdgrid.numerics tag: set once a run's start is logged
    logged: int  # the latest val.top1 step (0: none)


class Watch:
    """The grid's store and work directory, read as a person watching them would (nothing is asked of kdgrid)."""

    def __init__(self, db: Path, work: Path, plan):
        self.db, self.work, self.plan = db, work, plan
        self.hashes = [r.hash for r in plan.runs]

    def rows(self) -> dict[str, Row]:
        if not self.db.exists():
            return {}
        query = """
            SELECT t.value, r.run_uuid, r.status,
                   (SELECT value FROM tags WHERE run_uuid = r.run_uuid AND key = ?),
                   (SELECT step FROM latest_metrics WHERE run_uuid = r.run_uuid AND key = 'val.top1')
            FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = ?
            ORDER BY r.start_time"""
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)) as con:
                found = con.execute(query, (numerics.TAG, tracking.HASH)).fetchall()
        except sqlite3.OperationalError:  # no tables yet
            return {}
        return {h: Row(run_id, status, tag, int(step or 0)) for h, run_id, status, tag, step in found}

    def dir(self, h: str) -> Path:
        return workdir.run_dir(self.work, h)

    def writing(self, since: float = 0.0) -> list[Path]:
        """Temporary files of checkpoints and final weights written since `since` (time.time()): being written,
        or left half-written by a kill."""
        out = []
        for h in self.hashes:
            with contextlib.suppress(FileNotFoundError):
                for e in os.scandir(self.dir(h)):
                    if e.name.startswith((".checkpoint", ".final")) and e.name.endswith(".tmp"):
                        with contextlib.suppress(FileNotFoundError):
                            if e.stat().st_mtime >= since:
                                out.append(Path(e.path))
        return out

    def checkpointed(self, h: str) -> int:
        """The epoch of the newest checkpoint saved (its size and sha256 recorded), 0 if none."""
        try:
            entries = json.loads(workdir.sums_file(self.dir(h) / "checkpoint.pt").read_text())["checkpoints"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return 0
        return int(entries[-1]["epoch"]) if entries else 0

    def held(self, h: str) -> bool:
        return workdir.RunLock(self.dir(h)).held()

    def logging(self, live: bool = True) -> str | None:
        """Which MLflow logging is under way (`live`: by a process holding the run's lock), if any."""
        rows = self.rows()
        for h, row in rows.items():
            if row.status != "RUNNING" or (live and not self.held(h)):
                continue
            if row.numerics is None:
                return "opening a run"
            if (self.dir(h) / "final.pt").exists():
                return "finishing a run"
            if self.checkpointed(h) > row.logged and not any(p.parent.name == h for p in self.writing()):
                return "an epoch's metrics"
        return None

    def waiting(self, finished: bool) -> bool:
        """A teacher (`finished`: that finished) has students none of which has an MLflow run yet."""
        rows = self.rows()
        for t in self.plan.teachers:
            students = [r.hash for r in self.plan.runs if t.hash in r.deps]
            done = t.hash in rows and rows[t.hash].status == "FINISHED"
            if (done or not finished) and not any(s in rows for s in students):
                return True
        return False

    def between(self) -> bool:
        """A teacher finished and none of its students has an MLflow run yet."""
        return self.waiting(finished=True)

    def done(self) -> bool:
        rows = self.rows()
        return all(h in rows and rows[h].status == "FINISHED" for h in self.hashes)

    def training(self) -> bool:
        return any(self.held(h) for h in self.hashes)


# ---------------------------------------------------------------------------------------------------
# Killing
# ---------------------------------------------------------------------------------------------------
def _alive(pgid: int, field: int) -> list[int]:
    """Processes whose group (`field` 2) or session (3) is `pgid` and that still run (zombies waiting for init
    to reap them do not count)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[field]) == pgid and fields[0] not in ("Z", "X"):
                found.append(int(stat.parent.name))
    return found


def kill_group(p: subprocess.Popen, session: bool = False) -> None:
    """SIGKILL to the command's process group (the launcher and every worker), then wait until all are gone.

    `session`: to every process of the command's session too, as when the machine dies. Ray's workers leave
    the command's group for groups of their own, so killing the group alone kills the driver and Ray's
    daemons but leaves a worker to notice it is orphaned, finish what it was doing and exit: a phase aimed
    at would have passed by the time it is checked.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)
    p.wait(60)
    deadline = time.monotonic() + 60
    while left := _alive(p.pid, 2) + (_alive(p.pid, 3) if session else []):
        assert time.monotonic() < deadline, f"processes {left} of the command's group or session outlived SIGKILL"
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    deadline = time.monotonic() + 60
    while left := _alive(p.pid, 3):  # what Ray left must end by itself
        assert time.monotonic() < deadline, f"processes {left} of session {p.pid} outlived its group by 60 s"
        time.sleep(0.05)


@dataclass
class Kill:
    phase: str
    detail: str = ""
    at: float = 0.0  # seconds into the command
    since: float = 0.0  # the command's start, time.time()


@dataclass
class Target:
    """A phase to kill in: `ready(watch, log_text, seconds in, wall-clock start)` says it is under way (a detail,
    or None); `landed(watch, log_text, wall-clock start)` checks, once everything is dead, that the state shows
    the kill landed in it; `reachable(watch, phases hit)`: the phase can still come in the grid's state."""

    name: str
    ready: Callable[[Watch, str, float, float], str | None]
    landed: Callable[[Watch, str, float], bool] = lambda w, log, since: True
    reachable: Callable[[Watch, set[str]], bool] = lambda w, hit: True
    poll_s: float = 0.005


class Phases:
    """The targets, and the random moments drawn anew for each attempt."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.redraw()
        training = lambda w, hit: not w.done()  # noqa: E731
        self.targets = [
            Target("random moment", self._random_moment, poll_s=0.05),
            Target("mid-epoch", self._mid_epoch, reachable=training, poll_s=0.05),
            Target(
                "checkpoint write",
                lambda w, log, t, since: w.writing(since)[0].name.split(".")[1] if w.writing(since) else None,
                landed=lambda w, log, since: bool(w.writing(since)),
                reachable=training,
            ),
            Target(
                "MLflow logging",
                lambda w, log, t, since: w.logging(),
                landed=lambda w, log, since: w.logging(live=False) is not None,
                reachable=training,
            ),
            Target(
                "between teacher and students",
                lambda w, log, t, since: "" if "work item(s)" in log and w.between() else None,
                landed=lambda w, log, since: w.between(),
                reachable=lambda w, hit: w.waiting(finished=False),
                poll_s=0.02,
            ),
            Target(
                "report",
                lambda w, log, t, since: "" if "\nruns: " in log and "report written" not in log else None,
                landed=lambda w, log, since: "report written" not in log,
                # the report comes once the grid is trained: aimed at earlier, it would let a whole grid train
                reachable=lambda w, hit: w.done() or hit >= set(REQUIRED) - {"report"},
                poll_s=0.02,
            ),
        ]

    def redraw(self) -> None:
        self.delay = {"random moment": self.rng.uniform(1.0, 12.0), "mid-epoch": self.rng.uniform(0.2, 3.0)}
        self.started: float | None = None

    def _random_moment(self, w, log, t, since):
        return "" if t >= self.delay["random moment"] else None

    def _mid_epoch(self, w, log, t, since):
        if "running from epoch" not in log or not w.training():
            return None
        self.started = t if self.started is None else self.started
        return "" if t - self.started >= self.delay["mid-epoch"] else None


@dataclass
class Chaos:
    """Run `args` (a `kdgrid` command line) until it has been killed `kills` times in the phases of `targets`
    (each of REQUIRED at least once) and the grid is done, then once more to its end."""

    args: Sequence[str]
    cwd: Path
    watch: Watch
    seed: int
    kills: int
    env: dict[str, str] = field(default_factory=dict)
    session: bool = False  # kill the command's whole session (the machine dies), not its group alone
    timeout_s: float = 900.0  # one command, start to end
    landed: list[Kill] = field(default_factory=list)
    missed: list[Kill] = field(default_factory=list)  # killed just after its phase ended: counted apart
    reruns: int = 0
    seconds: float = 0.0
    log: Path | None = None

    def choose(self, rng: random.Random, phases: Phases) -> Target:
        """A reachable phase, those not hit yet six times likelier (training phases pass: once the grid is
        trained only the report and random moments are left); the moment between a teacher and its students,
        which may not come back, as soon as the grid is in it."""
        hit = Counter(k.phase for k in self.landed)
        reachable = [t for t in phases.targets if t.reachable(self.watch, set(hit))]
        if self.watch.between() and not hit["between teacher and students"]:
            return next(t for t in reachable if t.name == "between teacher and students")
        weights = [1 if hit[t.name] or t.name not in REQUIRED else 6 for t in reachable]
        return rng.choices(reachable, weights)[0]

    def attempt(self, target: Target | None, n: int) -> Kill | None:
        """One run of the command: killed once `target` is under way (None: let it end); the kill, if any."""
        self.log = self.cwd / f"chaos-{n:02d}.log"
        env = kdgrid_env({**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        t0, since = time.monotonic(), time.time()
        with open(self.log, "w") as out:
            p = subprocess.Popen(
                kdgrid_command(*self.args), cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip
        try:
            while p.poll() is None:
                elapsed = time.monotonic() - t0
                assert elapsed < self.timeout_s, f"attempt {n} ran past {self.timeout_s} s: {self.log}"
                detail = target.ready(self.watch, self.log.read_text(), elapsed, since) if target else None
                if detail is not None:
                    kill_group(p, self.session)
                    self.seconds += time.monotonic() - t0
                    return Kill(target.name, detail, round(elapsed, 1), since)
                time.sleep(target.poll_s if target else 0.5)
        finally:
            if p.poll() is None:
                kill_group(p, self.session)
        self.seconds += time.monotonic() - t0
        assert p.returncode == 0, f"attempt {n} failed ({p.returncode}):\n{self.log.read_text()[-4000:]}"
        return None

    def run(self) -> Chaos:
        rng = random.Random(self.seed)
        phases = Phases(rng)
        n = 0
        while True:
            done = self.watch.done()
            hit = {k.phase for k in self.landed}
            if done and len(self.landed) >= self.kills and hit >= set(REQUIRED):
                break
            assert n < 3 * self.kills, f"{n} attempts and still {len(self.landed)} kills landed, {sorted(hit)} hit"
            target = self.choose(rng, phases)
            phases.redraw()
            kill = self.attempt(target, n)
            n += 1
            if kill is None:
                continue
            self.reruns += 1
            landed = target.landed(self.watch, self.log.read_text(), kill.since)
            (self.landed if landed else self.missed).append(kill)
        final = self.attempt(None, n)  # to its end: whatever is left, and the report
        assert final is None
        return self

    def summary(self) -> list[str]:
        by = Counter(k.phase for k in self.landed)
        details = Counter((k.phase, k.detail) for k in self.landed if k.detail)
        parts = []
        for name in ("random moment", "mid-epoch", *REQUIRED):
            sub = ", ".join(f"{d} {c}" for (p, d), c in sorted(details.items()) if p == name)
            parts.append(f"{name} {by[name]}" + (f" ({sub})" if sub else ""))
        missed = f"; {len(self.missed)} more landed just after their phase ended" if self.missed else ""
        return [
            f"{len(self.landed)} kills (SIGKILL to the {'session' if self.session else 'process group'}), "
            f"{self.reruns} reruns, "
            f"{self.seconds:.0f} s of commands in all, seed {self.seed}",
            "kills per phase: " + ", ".join(parts) + missed,
        ]


# ---------------------------------------------------------------------------------------------------
# Comparing with the uninterrupted grid
# ---------------------------------------------------------------------------------------------------
def per_epoch(uri: str, scale: str, hashes: Sequence[str]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{hash: {metric: [(step, value), ...]}} of every logged metric of the run but the measured ones."""
    c = tracking.client(uri)
    runs = tracking.runs_by_hash(c, scale, hashes)
    out = {}
    for h in hashes:
        run = runs[h]
        keys = [k for k in run.data.metrics if not k.startswith(MEASURED)]
        out[h] = {k: sorted((m.step, m.value) for m in c.get_metric_history(run.info.run_id, k)) for k in keys}
    return out


def duplicates(uri: str, scale: str, hashes: Sequence[str]) -> list[str]:
    """Metrics logged twice at one step (measured ones too; not the per-start set-up cost)."""
    c = tracking.client(uri)
    out = []
    for h, run in tracking.runs_by_hash(c, scale, hashes).items():
        for k in run.data.metrics:
            if k in PER_START or k.startswith("system/"):
                continue
            steps = Counter(m.step for m in c.get_metric_history(run.info.run_id, k))
            out += [f"{h[:8]} {k} step {s} x{n}" for s, n in steps.items() if n > 1]
    return out


@dataclass
class Comparison:
    values: int = 0
    differing: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    locks: list[str] = field(default_factory=list)
    temporary: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.differing or self.duplicates or self.running or self.locks or self.temporary)

    def line(self) -> str:
        return (
            f"{self.values} per-epoch metric values compared bit for bit: {len(self.differing)} differing; "
            f"{len(self.duplicates)} duplicate epochs; {len(self.running)} RUNNING; {len(self.locks)} orphan "
            f"locks; {len(self.temporary)} temporary files left"
        )


def compare(reference: str, uri: str, plan, work: Path, out: Path) -> Comparison:
    hashes = [r.hash for r in plan.runs]
    want, got = per_epoch(reference, plan.scale, hashes), per_epoch(uri, plan.scale, hashes)
    cmp = Comparison()
    for h in hashes:
        for k in sorted(set(want[h]) | set(got[h])):
            a, b = want[h].get(k, []), got[h].get(k, [])
            cmp.values += len(a)
            if a != b:
                cmp.differing.append(f"{h[:8]} {k}: {a} vs {b}")
    cmp.duplicates = duplicates(uri, plan.scale, hashes)
    c = tracking.client(uri)
    exp = c.get_experiment_by_name(tracking.experiment_name(plan.scale))
    cmp.running = [r.info.run_name for r in c.search_runs([exp.experiment_id]) if r.info.status != "FINISHED"]
    cmp.locks = [str(p) for p in work.glob("*/lock")]
    cmp.temporary = [str(p) for p in [*work.glob("*/.*.tmp"), *out.glob(".*.tmp")]]
    return cmp


def report_rows(uri: str, plan) -> tuple[bool, list[dict]]:
    """(the report is complete, its tables' rows without run ids)."""
    from orchestrator.report import export
    from orchestrator.report.build import build_report

    report = build_report(plan, uri)
    rows = [
        {k: v for k, v in rec.items() if k != "run_ids"}
        for t in export.all_tables(report)
        for rec in export.table_records(t)
    ]
    return report.complete, rows


# ---------------------------------------------------------------------------------------------------
# Slurm: jobs cancelled and requeued under a waiting command
# ---------------------------------------------------------------------------------------------------
def squeue(jobs: Sequence[str]) -> dict[str, str]:
    """{job id: state} of those of `jobs` still in the queue."""
    if not jobs:
        return {}
    out = subprocess.run(["squeue", "-h", "-j", ",".join(jobs), "-o", "%i %T"], capture_output=True, text=True)
    return dict(parts for line in out.stdout.splitlines() if len(parts := line.split()) == 2)


@dataclass
class SlurmChaos:
    """Run `args` (`kdgrid reproduce` on the Slurm launcher, which submits and waits) while, at `events` random
    moments drawn from `seed`, one of its running jobs is cancelled (`scancel`: the job's processes get SIGTERM,
    which submitit ignores, then SIGKILL) or requeued (`scontrol requeue`: killed the same way and started
    again, from the job's own script). A command that a cancel left with failed runs is rerun; the last one,
    with no event left, must end the grid and write the report."""

    args: Sequence[str]
    cwd: Path
    ledger: Path  # the launcher's kdgrid-jobs.json
    seed: int
    events: int
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 900.0
    landed: list[Kill] = field(default_factory=list)
    reruns: int = 0
    seconds: float = 0.0

    def jobs(self) -> dict[str, str]:
        """{job id: item id} of every job the grid's launches submitted."""
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            return json.loads(self.ledger.read_text()).get("items", {})
        return {}

    def action(self, rng: random.Random) -> str:
        kinds = Counter(k.phase for k in self.landed)
        left = self.events - len(self.landed)
        missing = [a for a in ("scancel", "requeue") if not kinds[a]]
        if len(missing) >= left:  # the last events go to what has not happened yet
            return missing[0]
        return rng.choice(["scancel", "scancel", "requeue"])

    def strike(self, rng: random.Random, job: str, since: float, t: float) -> Kill:
        action = self.action(rng)
        if action == "scancel":
            subprocess.run(["scancel", job], check=True, timeout=30)
        else:
            subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
            deadline = time.monotonic() + 120
            while squeue([job]).get(job) not in ("PENDING", "RUNNING"):
                assert time.monotonic() < deadline, f"job {job} was not requeued: {squeue([job])}"
                time.sleep(0.2)
            # Slurm holds a requeued job back a while (BeginTime); start it now
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True, timeout=30)
        return Kill(action, self.jobs().get(job, "").split("-")[0], round(t, 1), since)

    def attempt(self, rng: random.Random, n: int) -> int:
        log = self.cwd / f"slurm-chaos-{n:02d}.log"
        env = kdgrid_env({**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        t0, since, at = time.monotonic(), time.time(), None
        with open(log, "w") as out:
            p = subprocess.Popen(
                kdgrid_command(*self.args), cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT, env=env
            )
        try:
            while p.poll() is None:
                elapsed = time.monotonic() - t0
                assert elapsed < self.timeout_s, f"attempt {n} ran past {self.timeout_s} s: {log}"
                if len(self.landed) < self.events:
                    running = sorted(j for j, s in squeue(list(self.jobs())).items() if s == "RUNNING")
                    if running and at is None:
                        at = elapsed + rng.uniform(0.5, 8.0)  # a random moment of a running job
                    elif running and elapsed >= at:
                        self.landed.append(self.strike(rng, rng.choice(running), since, elapsed))
                        at = None
                time.sleep(0.2)
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()
            self.seconds += time.monotonic() - t0
        return p.returncode

    def run(self) -> SlurmChaos:
        rng = random.Random(self.seed)
        for n in range(4 * self.events):
            before = len(self.landed)
            rc = self.attempt(rng, n)
            if rc == 0 and len(self.landed) == before >= self.events:  # undisturbed, and the grid is done
                return self
            self.reruns += 1
        raise AssertionError(f"{4 * self.events} commands and the grid is still not done: {self.landed}")

    def cancel_all(self) -> None:
        if jobs := list(squeue(list(self.jobs()))):
            subprocess.run(["scancel", *jobs], capture_output=True, timeout=30)

    def summary(self) -> list[str]:
        by = Counter(f"{k.phase} of a {k.detail or 'job'}" for k in self.landed)
        return [
            f"{len(self.landed)} events (scancel or scontrol requeue of a running job), {self.reruns} reruns, "
            f"{self.seconds:.0f} s of commands in all, seed {self.seed}",
            "events: " + ", ".join(f"{k} {c}" for k, c in sorted(by.items())),
        ]
