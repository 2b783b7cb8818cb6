"""A reward of your own: `steer train --reward examples/boxed_format.py:boxed`.

It rewards a format rather than correctness: a reply that puts its final answer in \\boxed{}
earns 0.5, and 1.0 when that boxed answer is also the gold one; a reply without a box earns 0.
steer calls it in its grader worker processes as boxed(completions, answers, rows), three
lists of equal length (completion texts without the stop token, gold answers, the data file's
records with all their fields), and trains on the returned floats as the rewards themselves.
"""

import re

_BOX = re.compile(r"\\boxed\{([^{}]*)\}")


def boxed(completions, answers, rows):
    rewards = []
    for text, answer in zip(completions, answers):
        boxes = _BOX.findall(text)
        if not boxes:
            rewards.append(0.0)
        else:
            rewards.append(1.0 if boxes[-1].strip() == str(answer).strip() else 0.5)
    return rewards
