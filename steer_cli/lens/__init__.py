"""`steer lens`: the logit lens on steering vectors (``logit``), the unembedding it reads
(``unembed``), token display (``tokens``), comparisons of two vectors files (``compare``) and the
lens figures (``plots``). The tuned lens lands here too.

May import: vectors, patching, models, figures, runs, train.checkpoint and the top-level helpers.
"""
