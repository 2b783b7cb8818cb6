"""``steer study``: the companion paper's experiments on trained vectors ("Small Vectors, Big
Effects", arXiv 2509.06608), one module per experiment.

Accuracy studies (layers, pairs, transfer, magnitude) are grids of ``steer eval`` cells over one
loaded model; token- and circuit-level studies (tokens, patch, persistence, seeds, adaptive) are
teacher-forced passes with hooks. Every study writes ``study.json`` (``record.py``) and PNGs under
its output directory. May import: evaluate, patching, lens, vectors, rollout, data, rewards and the
top-level helpers; nothing imports study except the CLI.
"""
