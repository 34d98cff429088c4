"""What kdgrid installs, where pyproject.toml alone cannot say it (the rest of the metadata is there).

- The library's packages, `trainer` and `orchestrator`, found (a new subpackage ships without a list to edit);
  not `benchmarks` or `tests`.
- The grid's YAML as package data: the checkout's top-level `experiments/` and `ablations/` stay the source
  and install as `orchestrator/grid/data/{experiments,ablations}/`, where `orchestrator.grid.files` finds
  them outside a checkout.
"""

from setuptools import find_packages, setup

GRID_DATA = {"orchestrator.grid.data.experiments": "experiments", "orchestrator.grid.data.ablations": "ablations"}

setup(
    packages=[*find_packages(include=["trainer", "trainer.*", "orchestrator", "orchestrator.*"]), *GRID_DATA],
    package_dir=GRID_DATA,
    package_data=dict.fromkeys(GRID_DATA, ["*.yaml"]),
)
