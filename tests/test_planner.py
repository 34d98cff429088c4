"""The launchers' scheduler on real plans (launch/scheduler.py, launch/costs.py).

- FLOPs from a transformer's shape agree with torch's FlopCounterMode on the model itself;
- a run's spec comes back from its flattened MLflow params with the same content hash;
- on the cut mini grid, with the estimates as the true costs, the cost schedule keeps two workers busier
  than plan order, and a teacher item cut in parts frees each part's students as that part ends;
- (slow) a grid trained through the local launcher prints the grid's ETA, and the cost.* it logged are
  regrouped into exactly the processes that ran (their sums equal the runs' logged totals).
"""

from __future__ import annotations

import json
import re

import pytest

from orchestrator.launch import costs
from orchestrator.launch.items import work_items
from orchestrator.launch.scheduler import Scheduler

CUT = ["student.recipe.epochs=2"] + [
    f"teachers.{t}.{k}"
    for t in ("regnety_160", "cait_xxs24_224", "cait_s24_224")
    for k in ("recipe.epochs=1", "data.train_subset=5000")
]


@pytest.fixture(scope="module")
def cut_plan():
    from orchestrator.plan import make_plan

    return make_plan("mini", overrides=CUT)


def test_transformer_flops_match_torch_flop_counter(cut_plan):
    models = {(r.spec.student.name, json.dumps(r.spec.model_kwargs(), sort_keys=True)) for r in cut_plan.runs}
    models |= {
        (r.spec.teacher.name, json.dumps(r.spec.teacher_kwargs(), sort_keys=True))
        for r in cut_plan.runs
        if r.spec.teacher is not None
    }
    checked = 0
    for name, kw in sorted(models):
        if "regnet" in name:
            continue  # a CNN: counted by FlopCounterMode itself
        ours = costs.forward_flops(name, json.loads(kw), 1, 28)
        torch_count = costs._forward_flops(name, kw, 1, 28)
        assert ours == pytest.approx(torch_count, rel=0.05), name
        checked += 1
    assert checked >= 4


def test_spec_comes_back_from_mlflow_params(cut_plan):
    from trainer.tracking import _flatten

    for r in cut_plan.runs:
        params = r.spec.model_dump(mode="json", exclude={"tags", "name"})
        params["effective"] = {"lr": 0.001, "steps_per_epoch": 40}
        spec = costs.spec_from_params(_flatten(params))
        assert spec is not None and spec.content_hash() == r.hash
    assert costs.spec_from_params({"student.name": "x", "recipe.epochs": "oops"}) is None


def test_a_cohorts_runs_come_back_as_one_process_epoch(cut_plan, tmp_path):
    """Each run of a cohort logs the equal training share plus its own evaluation as `cost.cpu_s`: the
    observations must regroup the runs on the share (one process-epoch: every member's steps, one teacher
    pass, their CPU summed), not on `cost.cpu_s`, which differs between them."""
    from trainer import tracking
    from trainer.engine import cohort_key

    by_key: dict = {}
    for r in cut_plan.students:
        if r.spec.teacher is not None:
            by_key.setdefault(cohort_key(r.spec), []).append(r)
    runs = max(by_key.values(), key=len)[:3]
    assert len(runs) == 3
    share, evals = 30.0, [1.5, 2.0, 2.5]

    def store(name: str, with_share: bool) -> str:
        """The three runs' epoch 1 in a new store, as the engine logs it (before the share: without it)."""
        uri = f"sqlite:///{tmp_path / name}"
        c = tracking.client(uri)
        for r, e in zip(runs, evals):
            log = tracking.RunLog.open(c, r.spec, r.hash)
            log.log_params(r.spec.model_dump(mode="json", exclude={"tags", "name"}))
            metrics = {"cost.cpu_s": share + e}
            if with_share:
                metrics[tracking.TRAIN_SHARE] = share
            log.log_metrics(metrics, step=1)
        return uri

    obs = costs.observations(store("mlflow.db", with_share=True), "mini")
    assert len(obs) == 1
    measured, work = obs[0]
    assert measured == pytest.approx(3 * share + sum(evals))
    expected: dict = {}
    for r in runs:
        for k, v in costs.epoch_work(r.spec)[0].items():
            expected[k] = expected.get(k, 0.0) + v
    for k, v in costs.epoch_work(runs[0].spec)[1].items():  # the teacher's pass, once for the process
        expected[k] = expected.get(k, 0.0) + v
    assert work == pytest.approx(expected)

    # a store from before the share was logged: a run whose value no other run shares is a process of its own
    old = store("old.db", with_share=False)
    assert sorted(m for m, _ in costs.observations(old, "mini")) == pytest.approx([share + e for e in evals])


def simulate(items, mode: str, workers: int = 2) -> tuple[float, list]:
    """Drive a Scheduler as the local launcher does, with its own estimates as the true durations."""
    scheduler = Scheduler(items, workers, mode=mode)
    now, running, idle, log = 0.0, {}, set(range(workers)), []
    while True:
        for gid in scheduler.order:
            if gid not in scheduler.ended and scheduler.ready(gid):
                scheduler.prune(gid, lambda part: part)
        for w, part in scheduler.assign(sorted(idle), {w: p.id for w, (p, _) in running.items()}, now=now):
            idle.discard(w)
            end = now + scheduler.running[part.id].estimate
            running[w] = (part, end)
            log.append((now, w, part))
        if not running:
            break
        w = min(running, key=lambda k: running[k][1])
        part, now = running.pop(w)
        idle.add(w)
        scheduler.finish(part.id, now=now)
    return now, log


def test_cost_schedule_keeps_the_workers_busy(cut_plan):
    spans = {}
    for mode in ("order", "cost"):
        items = work_items(cut_plan.runs, max_cohort=8, workers=2, balance=mode == "order")
        end, log = simulate(items, mode)
        trained = sorted(h for _, _, part in log for h in part.hashes)
        assert trained == sorted(r.hash for r in cut_plan.runs)  # every run once
        busy = sum(Scheduler(items, 2, mode=mode).estimate(p.runs, p.id.split("-p")[0]) for _, _, p in log)
        spans[mode] = (end, end / (busy / 2))
    (order_end, order_ratio), (cost_end, cost_ratio) = spans["order"], spans["cost"]
    assert cost_end < order_end
    assert cost_ratio <= 1.05 < order_ratio, spans
    assert Scheduler(items, 2, mode="plan").mode == "order"  # the schedule's old name still works


def test_a_lone_cohort_gets_every_worker(cut_plan):
    """A --resolve round can be one cohort (one teacher's students at a new seed): the local pool must not
    be capped at one worker per item, or the cost schedule can never cut it (the pool was, until a
    7-run round trained on one of two cores)."""
    from orchestrator.launch.launchers.local import pool_size

    items = work_items(cut_plan.runs, max_cohort=8, workers=2, balance=False)
    cohort = max((it for it in items if it.role == "student"), key=lambda it: len(it.runs))
    assert len(cohort.runs) >= 4
    assert pool_size(2, [cohort], "cost") == 2 and pool_size(2, [cohort], "order") == 1
    whole = Scheduler([cohort], 1).estimate(cohort.runs, cohort.id)
    end, log = simulate([cohort], "cost", workers=pool_size(2, [cohort], "cost"))
    assert {w for _, w, _ in log} == {0, 1} and end < whole


def test_a_cut_teacher_item_frees_its_students_part_by_part(cut_plan):
    items = work_items(cut_plan.runs, max_cohort=8, workers=2, balance=False)
    teachers = next(it for it in items if it.role == "teacher")
    assert len(teachers.runs) == 3  # one cohort key: trained in lockstep unless the scheduler cuts them
    scheduler = Scheduler(items, 2)
    first = scheduler.assign([0, 1], {}, now=0.0)
    assert len(first) == 2 and {len(p.runs) for _, p in first} == {1, 2}  # the big teacher alone
    short = min((p for _, p in first), key=lambda p: scheduler.running[p.id].estimate)
    scheduler.finish(short.id, now=scheduler.running[short.id].estimate)
    freed = {h for h in short.hashes}
    ready = [gid for gid in scheduler.order if scheduler.left[gid] and scheduler.ready(gid)]
    assert ready and all(d in freed for gid in ready for r in scheduler.left[gid] for d in r.deps)
    big = next(p for _, p in first if p is not short)
    waiting = [gid for gid in scheduler.order if scheduler.left[gid] and not scheduler.ready(gid)]
    assert waiting and all(d in big.hashes for gid in waiting for r in scheduler.left[gid] for d in r.deps)
    assert scheduler.eta(10.0, {0: big.id}) > 0
    # past its estimate, the big teacher still runs: its students do not start, however the plan times them
    late = scheduler.running[big.id].estimate * 3
    started = scheduler.assign([1], {0: big.id}, now=late)
    assert all(all(d not in big.hashes for r in p.runs for d in r.deps) for _, p in started)
    busy = {w: p.id for w, p in started}
    scheduler.finish(big.id, now=late + 1)
    idle = [w for w in (0, 1) if w not in busy]
    started = scheduler.assign(idle, busy, now=late + 1)
    assert any(d in big.hashes for _, p in started for r in p.runs for d in r.deps)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_grid_logs_eta_and_its_costs_calibrate(tmp_path):
    from orchestrator.plan import make_plan
    from tests.conftest import kdgrid
    from tests.test_launch_local import LESS_DATA, assert_all_finished, store
    from trainer import tracking

    uri, work = store(tmp_path)
    out = kdgrid(
        "reproduce",
        "--scale",
        "smoke",
        "--tables",
        "fig4",
        "--tracking-uri",
        uri,
        "--workdir",
        str(work),
        "--workers",
        "2",
        "--out",
        str(tmp_path / "reports"),
        *LESS_DATA,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-5000:]
    plan = make_plan("smoke", "fig4", overrides=list(LESS_DATA[1::2]))
    assert_all_finished(uri, plan, out.stdout)
    assert "critical path first" in out.stdout
    assert re.search(r"grid: \d+/4 runs ended, \d+ item\(s\) training, ETA \d+:\d\d", out.stdout), out.stdout

    # the observations regroup the runs' shares into processes: their totals are the runs' logged totals
    c = tracking.client(uri)
    logged = {"cost.cpu_s": 0.0, "cost.setup_cpu_s": 0.0}
    for run in tracking.runs_by_hash(c, "smoke").values():
        for key in logged:
            logged[key] += sum(m.value for m in c.get_metric_history(run.info.run_id, key))
    obs = costs.observations(uri, "smoke")
    setups = [m for m, w in obs if set(w) <= {costs.SETUP} or costs.SETUP in w]
    epochs = [m for m, w in obs if costs.SETUP not in w]
    assert sum(epochs) == pytest.approx(logged["cost.cpu_s"], rel=1e-6)
    assert sum(setups) == pytest.approx(logged["cost.setup_cpu_s"], rel=1e-6)
    parts = set(re.findall(r"\((teacher-\w+|student-[\w-]+)\)", out.stdout))
    assert len(setups) == len(parts)  # one set-up per process that trained
    rates, n = costs.calibrate(uri, "smoke")
    assert n == len(obs) and rates[costs.SETUP] > 0
    teacher = plan.teachers[0]
    assert costs.model_key(teacher.spec.student.name, teacher.spec.model_kwargs()) in rates
