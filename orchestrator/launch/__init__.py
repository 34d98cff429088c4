"""Launching: a planned grid's missing runs trained on what the user has (`execution.execute`).

    options.py    LaunchOptions: every launch setting, built once by the command
    execution.py  execute: what MLflow lacks -> work items -> the launcher; summarize
    items.py      work items (cohorts, split over the workers, deps first) and the LaunchContext
    registry.py   the Launcher protocol and the registry (`@register`; built-ins in launchers/)
    launchers/    local (a pool of processes), ray (Ray Tune trials), slurm (submitit jobs)
    dispatch.py   the bookkeeping of a launcher that starts parts through the scheduler
    scheduler.py  cost-aware scheduling of the items; schedule.py its pure list scheduling; costs.py the prices
    worker.py     the worker body every launcher runs (`run_item`); ddp.py one item as one DDP job
    outcome.py    what became of a run; events.py what a training process reports; view.py the live view

Importing this package imports nothing heavy: `kdgrid --help` lists the launchers from the registry.
"""
