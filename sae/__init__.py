"""Model-side work: loading models, building prompts, reading hook activations."""
