"""The search behind `kdgrid tune` (orchestrator/commands/tune.py): spec fields searched with Ray Tune
(random search, ASHA over per-epoch top-1), the best configurations re-run over seeds, and a report of where
the paper's choice lands.

- `space.py`: the search file (YAML beside the ablation tables), parsed and checked before anything starts;
- `search.py`: trials as kdgrid runs, the teacher first, ASHA and the budget, resume with Tune's restore;
- `report.py`: the re-runs and the report (markdown, CSV, a plot per searched field), from MLflow.
"""
