"""bprop: the command-line tool (validate, check) of the backprop reference-validation suite."""
