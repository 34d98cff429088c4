"""The orchestrator's side of MLflow, beside the trainer's (trainer/tracking.py): the grid's own run, under
which every run of a grid nests and on which its report is published (grid_run.py), and the MLflow server
that `kdgrid ui` starts (server.py)."""
