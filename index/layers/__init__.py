"""The table of `shoggoth layers`."""
