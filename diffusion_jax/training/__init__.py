"""Training: the train state, pure train steps, optimizer, loop, checkpoints."""
