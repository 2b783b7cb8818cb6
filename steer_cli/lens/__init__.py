"""`steer lens`: the logit lens on steering vectors (``logit``), the unembedding it reads
(``unembed``), token display (``tokens``), comparisons of two vectors files (``compare``), the
lens figures (``plots``), and the tuned lens: its files and math (``tuned``), its training
(``tuned_train``) and figures (``tuned_plot``).

May import: vectors, patching, models, figures, runs, train.checkpoint and the top-level helpers;
``tuned_train`` also data and rollout (the model completes the dataset's problems for its data).
"""
