"""The cost-aware scheduler on made-up costs (orchestrator/launch/schedule.py), and the cost fit (costs.py)."""

from __future__ import annotations

import itertools

import pytest

from orchestrator.launch.costs import fit_rates, price
from orchestrator.launch.schedule import Job, lpt, makespan, place, priorities


def students(prefix: str, costs) -> tuple:
    return tuple((f"{prefix}{i}", float(c)) for i, c in enumerate(costs))


def fifo(jobs, workers: int) -> float:
    """Makespan of the order the jobs are listed in, whole, each on the first free worker once ready."""
    free, end = [0.0] * workers, {}
    todo = list(jobs)
    while todo:
        job = next(j for j in todo if all(d in end for d in j.deps))
        todo.remove(job)
        w = min(range(workers), key=lambda i: free[i])
        start = max([free[w]] + [end[d] for d in job.deps])
        free[w] = end[job.id] = start + job.cost
    return max(free)


# the mini grid's shape: a long teacher with 16 students, two short teachers with 7, a lone baseline
GRID = [
    Job("baseline", students("n", [20]), shared=5),
    Job("teachers-small", students("t", [15, 15]), shared=5),
    Job("teacher-big", students("T", [40]), shared=5),
    Job("students-small", students("x", [12] * 7), shared=10, deps=frozenset({"teachers-small"})),
    Job("students-big-1", students("a", [12] * 8), shared=20, deps=frozenset({"teacher-big"})),
    Job("students-big-2", students("b", [12] * 8), shared=20, deps=frozenset({"teacher-big"})),
]


def test_critical_path_goes_first():
    prio = priorities(GRID, workers=2)
    # the big teacher is not the costliest level-0 job by much, but 16 students wait for it
    assert prio["teacher-big"] > prio["teachers-small"] > prio["baseline"]
    placed = place(GRID, [0.0, 0.0])
    first = {p.job for p in placed if p.start == 0.0}
    assert first == {"teacher-big", "teachers-small"}  # the lone baseline waits: it has nothing below it
    starts = {p.job: p.start for p in placed}
    ends = {}
    for p in placed:
        ends[p.job] = max(ends.get(p.job, 0.0), p.end)
    for job in GRID:  # every student starts after its teacher
        for d in job.deps:
            assert starts[job.id] >= ends[d]
    # on one worker the order alone shows the rule: the teacher with the most work below it first
    one = place(GRID, [0.0])
    assert one[0].job == "teacher-big"


def test_critical_path_beats_plan_order_and_meets_the_floor():
    work = sum(j.cost for j in GRID)
    placed = place(GRID, [0.0, 0.0])
    ours = makespan(placed)
    assert ours < fifo(GRID, 2)  # listed order: the baseline first, the big teacher's students last
    # the floor: all work over both workers (cuts add a teacher pass each, so allow one part's shared cost)
    assert ours <= work / 2 + 20
    # every member trained exactly once
    got = sorted(m for p in placed for m in p.members)
    assert got == sorted(m for j in GRID for m, _ in j.members)


def test_cohort_split_balances_cost_not_count():
    costs = [9, 7, 5, 4, 3, 2]
    job = Job("cohort", students("s", costs), shared=1)
    placed = place([job], [0.0, 0.0])
    assert len(placed) == 2  # two idle workers: worth a second teacher pass
    ends = [p.end for p in placed]
    assert max(ends) - min(ends) <= max(costs)
    # half the members each, in plan order, would end 21 vs 9 (+1); balancing by cost ends both at 16
    assert max(ends) == pytest.approx(1 + sum(costs) / 2)
    # lpt alone: exhaustive check that no 2-way cut of these members ends sooner
    best = min(
        max(
            sum(c for i, c in enumerate(costs) if mask >> i & 1),
            sum(c for i, c in enumerate(costs) if not mask >> i & 1),
        )
        for mask in range(1, 2 ** len(costs) - 1)
    )
    assert max(sum(c for _, c in part) for _, part in lpt(job.members, [0.0, 0.0], 0.0)) == best


def test_split_when_a_teacher_finishes_fills_the_free_worker():
    # one worker is free now; the other is busy for 30 s more: the cohort is cut so both end together
    job = Job("cohort", students("s", [12] * 8), shared=10)
    placed = place([job], [0.0, 30.0])
    assert len(placed) == 2
    by_worker = {p.worker: p for p in placed}
    assert by_worker[1].start == 30.0
    assert len(by_worker[0].members) > len(by_worker[1].members)
    assert abs(by_worker[0].end - by_worker[1].end) <= 12
    assert makespan(placed) < 10 + 8 * 12  # better than the whole cohort on the free worker


def test_no_cut_when_it_only_adds_teacher_passes():
    jobs = [Job("a", students("a", [10] * 4), shared=20), Job("b", students("b", [10] * 4), shared=20)]
    placed = place(jobs, [0.0, 0.0])
    assert sorted(p.job for p in placed) == ["a", "b"]  # one part each, one per worker
    assert makespan(placed) == 60


def test_running_jobs_and_cycles():
    # a student cohort whose teacher is still running (ends at 50 by its estimate) starts then
    job = Job("s", students("s", [5, 5]), shared=1, deps=frozenset({"teacher"}))
    placed = place([job], [0.0, 50.0], done={"teacher": 50.0})
    assert min(p.start for p in placed) == 50.0
    with pytest.raises(ValueError, match="cycle"):
        place(
            [Job("x", students("x", [1]), deps=frozenset({"y"})), Job("y", students("y", [1]), deps=frozenset({"x"}))],
            [0.0],
        )


def test_plan_is_optimal_on_small_made_up_grids():
    """Against brute force: every order and every 1- or 2-way cut of 4 independent jobs on 2 workers,
    the plan is within one member's cost of the best makespan."""
    import random

    rng = random.Random(0)
    for trial in range(10):
        jobs = [
            Job(
                f"j{i}",
                students(f"j{i}-", [rng.randint(1, 20) for _ in range(rng.randint(1, 4))]),
                shared=rng.randint(0, 8),
            )
            for i in range(4)
        ]
        ours = makespan(place(jobs, [0.0, 0.0]))
        best = float("inf")
        for assign in itertools.product(range(3), repeat=len(jobs)):  # worker 0, worker 1, or cut over both
            loads = [0.0, 0.0]
            for j, a in zip(jobs, assign):
                if a < 2:
                    loads[a] += j.cost
                else:
                    parts = lpt(j.members, [loads[0], loads[1]], j.shared)
                    for i, members in parts:
                        loads[i] += j.shared + sum(c for _, c in members)
            best = min(best, max(loads))
        assert ours <= best + max(c for j in jobs for _, c in j.members), (trial, ours, best)


def test_fit_rates_recovers_made_up_prices():
    true = {"big": 4e-11, "small": 9e-11, "setup": 3.0}
    obs = []
    for big, small in [(1e12, 0), (0, 1e11), (2e12, 5e11), (5e11, 3e11), (1e12, 1e12)]:
        work = {k: v for k, v in (("big", big), ("small", small)) if v}
        obs.append((price(work, true), work))
    obs += [(3.0, {"setup": 1.0})] * 3
    rates = fit_rates(obs)
    for k in ("big", "small"):
        assert rates[k] == pytest.approx(true[k], rel=0.1)
    assert rates["setup"] == pytest.approx(3.0, rel=0.1)
    # a model never seen takes the common rate, between the two
    assert 4e-11 < rates["*"] < 9e-11
    assert fit_rates([])["*"] > 0
