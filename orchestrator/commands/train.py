"""`kdgrid train`: spec files trained in this process (several share a teacher pass when they can), with a bar
per run in a terminal and a progress line per report otherwise (a pipe, a file: trainer/progress.py)."""

from __future__ import annotations

import sys
from contextlib import nullcontext

from orchestrator.launch.outcome import Outcome
from trainer.run import train_specs
from trainer.spec import load_experiment


def run(args) -> int:
    specs = [load_experiment(p) for p in args.specs]  # every spec is checked before anything trains
    progress, callbacks = nullcontext(), ()
    if not args.quiet:
        from trainer.progress import LogLines, RichProgress

        if sys.stdout.isatty():
            progress = RichProgress()
            callbacks = (progress,)
        else:
            callbacks = (LogLines(),)
    with progress:
        results = train_specs(
            specs,
            work=args.workdir,
            tracking_uri=args.tracking_uri,
            threads=args.threads,
            device=args.device,
            callbacks=callbacks,
            force=args.force,
        )
    for h, status in results.items():
        print(f"{h[:8]}  {status}")
    return 1 if any(Outcome.parse(s).kind == "failed" for s in results.values()) else 0
