"""The vectors file (``file``: safetensors [num_layers, hidden] + metadata), ``extract`` (vectors out
of runs, checkpoints and matrices), ``merge`` (stacking single-layer runs, averaging seeds, folding
into weights) and ``gguf`` (llama.cpp control vectors).

May import: patching, models, train.checkpoint and the top-level helpers.
"""
