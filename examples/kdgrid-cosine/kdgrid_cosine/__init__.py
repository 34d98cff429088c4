"""A lab's distillation method for kdgrid, installed beside it (the `kdgrid.methods` entry point)."""
