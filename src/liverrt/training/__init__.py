"""Training loops, losses, augmentations and checkpoints."""
