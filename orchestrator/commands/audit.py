"""`kdgrid audit`: every setting of every table's runs at a scale beside its source value (the paper, the
released code, DeiT, cls_KD), with the source cited (orchestrator/report/audit.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from orchestrator.report.audit import audit, markdown, to_json


def run(args) -> int:
    a = audit(args.scale, args.tables, args.recipe, args.overrides, args.sources)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "audit.md").write_text(markdown(a), encoding="utf-8")
        (out / "audit.json").write_text(to_json(a), encoding="utf-8")
        print(f"md: {out / 'audit.md'}\njson: {out / 'audit.json'}")
    else:
        sys.stdout.write(markdown(a) if args.format == "md" else to_json(a))
    counts = ", ".join(f"{v} {k}" for k, v in sorted(a.counts().items()))
    print(f"{len(a.rows)} audit rows: {counts}", file=sys.stderr)
    return 1 if args.strict and a.failing else 0
