"""`shoggoth generate` and `grid`: the mask in action."""
