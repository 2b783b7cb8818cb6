"""Rollout (generation) backends behind one interface: ``hf`` (transformers) and ``vllm``."""

import os

# vLLM logs to stdout by default, where steer prints results (``steer generate --json``, tables):
# its engine and worker processes, which inherit this, log to stderr instead, unless told otherwise.
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
