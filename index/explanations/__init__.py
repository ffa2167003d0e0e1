"""The tables of `shoggoth explain`."""
