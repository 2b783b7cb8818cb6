"""Datasets: training sets (datasets.py), evaluation benchmarks (benchmarks.py) and the records
they produce (records.py). Heavy imports (``datasets``, ``pyarrow``) happen only when loading."""
