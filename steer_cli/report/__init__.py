"""`steer report`: collecting results (``collect``), the paper's tables (``tables``, tabulate), the
figures (``plots``, matplotlib) and the command itself (``run``).

May import: evaluate (metrics), patching.strength, models, figures and the top-level helpers.
"""
