"""The model-patching layer: the architecture table (``archs``), steering vectors and their hooks
(``steering``), strength and layer subsets at inference (``strength``), the LoRA/full training
setups (``setups``) and folding vectors into weights (``fold``).

May import: models and the top-level helpers. ``strength`` imports no torch at top level: the
settings (and so the CLI at startup) read its parsers.
"""
