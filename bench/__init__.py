"""Benchmarks: `make bench` (python -m bench.run_all) or one at a time (python -m bench.<name>).

They print figures against the targets of issue 7 and never assert timing; the
results with the command that produced them are kept in the notes (BENCH.md).
"""
