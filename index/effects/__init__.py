"""The tables and statistics of `shoggoth effects`."""
