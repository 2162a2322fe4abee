"""servomexlib benchmark suite (issue 8): run ``python -m benchmarks`` from the repository root.

Each module measures one group of figures against the simulator (over real pseudo-terminals
where a line is involved) and returns :class:`~benchmarks.common.Figure` rows; ``run.py`` prints
them as one table. See ``benchmarks/README.md`` for what each figure means and how its bound or
target is computed.
"""
