"""Training in torch: runs, stacks of runs in lockstep, backprop, optimizers, checkpoints' state, plots."""
