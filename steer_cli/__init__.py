"""steer: RL-trained steering vectors for LLM reasoning, from training to the paper's tables."""

__version__ = "0.1.0"
