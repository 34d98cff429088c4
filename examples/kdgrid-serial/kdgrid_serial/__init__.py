"""A lab's launcher for kdgrid, installed beside it (the `kdgrid.launchers` entry point)."""
