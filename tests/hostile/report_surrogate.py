"""Hostile (appended to a correct layer-api submission): a lone surrogate in an exception message.

The message crosses the result pipe as JSON ("\\udcff") and comes back a str no UTF-8 writer accepts:
printing the terminal summary or writing summary.csv raised UnicodeEncodeError (exit 1, the summary of
every submission lost).
"""


def grad_softmax_crossentropy_with_logits(logits, reference_answers):
    raise ValueError("gradient \udcff\ud800 is undefined")
