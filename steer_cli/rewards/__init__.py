"""Rewards: answer extraction (``extraction``), math-verify and exact grading (``grading``),
reward plug-ins (``plugins``), the worker pool that runs both under a hard timeout (``pool``), and
what a reward reads of a completion (``texts``).

Dependencies run one way: extraction <- grading <- pool -> plugins. extraction, grading, plugins
and pool import only the standard library and each other at top level, because the pool's worker
processes import them and must never load torch.
"""
