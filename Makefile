# The two commands of the README. Both install what they need (scripts/bootstrap.sh: pyproject.toml's
# ranges, pinned to the tested set by requirements/lock.txt).
.PHONY: reproduce first-look test test-fast test-all check docs plan report ui bench lock image

# The mini reproduction that decides claims: 3 seeds per row (the sequential design's first look), then
# --resolve adds seeds to the rows of claims without a verdict, look by look (4, 6, 8, 10), within 6 CPU-hours
# (docs/statistics.md: why these numbers). Local launcher, MLflow in ./kdgrid.db, report in ./reports.
reproduce:
	scripts/bootstrap.sh run
	.venv/bin/kdgrid reproduce --seeds 3 --resolve --budget-cpu-hours 6 $(ARGS)

first-look:  ## one seed of the mini grid (~40 min on 2 cores): the tables and Figure 4; it decides no claim
	scripts/bootstrap.sh run
	.venv/bin/kdgrid reproduce --seeds 1 $(ARGS)

test:  ## the checks, then the test suite (starts a real single-node Slurm when run as root beside ../shared/ci)
	scripts/test.sh $(ARGS)

test-fast:  ## the inner loop (~2 min on 2 cores): every test not marked slow or heavy, on two workers, no checks
	scripts/bootstrap.sh test
	RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 .venv/bin/python -m pytest -q -n 2 -m "not slow and not heavy" $(ARGS)

test-all:  ## make test with the heavy tests too (the Ray and Slurm chaos tests: a grid killed, cancelled, requeued)
	KDGRID_HEAVY=1 scripts/test.sh $(ARGS)

check:  ## the checks alone, in seconds: ruff check, ruff format --check, lint-imports, mkdocs build --strict
	scripts/bootstrap.sh test
	scripts/check.sh

docs:  ## serve the docs site on http://127.0.0.1:8000
	scripts/bootstrap.sh test
	.venv/bin/mkdocs serve

plan:
	scripts/bootstrap.sh run
	.venv/bin/kdgrid plan $(ARGS)

report:
	scripts/bootstrap.sh run
	.venv/bin/kdgrid report $(ARGS)

ui:
	scripts/bootstrap.sh run
	.venv/bin/kdgrid ui $(ARGS)

bench:
	scripts/bootstrap.sh test
	.venv/bin/python -m benchmarks $(ARGS)

lock:  ## refresh requirements/lock.txt: the newest releases within pyproject.toml's ranges (then run make test)
	scripts/lock.sh

image:  ## slow, opt-in, not run by CI (as root): the cluster image built with podman on a debootstrap base, run, timed
	scripts/bootstrap.sh run
	docker/build_local.sh $(ARGS)
