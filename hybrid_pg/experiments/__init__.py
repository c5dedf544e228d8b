"""Experiment tooling on top of the library: the ``hybrid-pg`` command line, run configs, the one
run engine, ablation grids and their reports, benchmarks, rl-zoo3 glue, plots and aggregates.

The library (``hybrid_pg`` outside this subpackage) never imports it (tests/test_layers.py).

* :mod:`.config`: the run config (YAML, ``--set`` overrides, one schema per section);
* :mod:`.runner`: the run engine and env factory (every command that trains calls it);
* :mod:`.csv_callbacks`: SB3 callbacks writing ``diagnostics.csv`` and ``evaluations.csv``;
* :mod:`.results`: per-update series and learning curves of a finished run;
* :mod:`.plots`: a run's figures; :mod:`.aggregate`: IQM and bootstrap intervals;
* :mod:`.ablate` and :mod:`.ablate_report`: ablation grids and their tables and figures;
* :mod:`.benchmark`: grid summaries and the speed benchmark; :mod:`.zoo`: rl-zoo3 registration;
* :mod:`.cli`: ``hybrid-pg train | plot | ablate | bench``.
"""
