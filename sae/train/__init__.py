"""Training dictionaries: the activation stream, sae-lens's trainers, DDP, evaluation, import."""
