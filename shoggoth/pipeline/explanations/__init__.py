"""`shoggoth explain`: explanations by a language model, scored."""
