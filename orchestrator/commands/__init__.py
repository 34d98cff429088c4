"""The commands, one module each, read top to bottom: load -> plan -> execute -> summarise -> report ->
publish. Each exposes `run(args) -> exit code`; `orchestrator.cli` parses the command line and dispatches.

    plan.py     kdgrid plan            the planned runs and their MLflow state
    launch.py   kdgrid launch/reproduce  train what is missing (reproduce: wait, report, publish)
    resolve.py  kdgrid reproduce --resolve  then add seeds to the rows of unresolved claims, round by round
    report.py   kdgrid report          the report from MLflow (one recipe, or several side by side)
    tune.py     kdgrid tune            a Ray Tune search, its re-runs and its report
    train.py    kdgrid train           spec files, in this process
    ui.py       kdgrid ui              the MLflow UI on the grid's store
    check.py    kdgrid check           the installed dependencies against kdgrid's ranges

    options.py  the typed options the commands build once from the command line
    publish.py  the report written once, and published on the grid's MLflow run
"""
