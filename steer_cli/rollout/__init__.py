"""Rollout (generation) backends behind one interface: ``hf`` (transformers) and ``vllm``."""
