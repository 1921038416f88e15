"""Benchmark harness for gpu_cluster: ``python benchmarks/sweep.py DB --factors ...``.

Modules, in the order data flows through a sweep:

* ``machine``    — facts about the machine and library versions;
* ``synthetic``  — embedding-shaped data generated in chunks, no database;
* ``projection`` — power-law projection of a stage's seconds, and the budget verdict;
* ``memory``     — peak host RSS / GPU memory sampled during a stage;
* ``measure``    — one model at one factor, stage by stage, with the library's functions;
* ``readpath``   — the library's reader against a raw ``sqlite3`` scan;
* ``runner``     — the sweep: factors x models x backends, budget, baseline;
* ``report``     — results.json, results.csv, PNG plots and the terminal table.

``sweep.py`` is the thin command line over ``runner.run_sweep``.
"""
