"""What every layer uses and nothing model- or database-specific: errors, atomic files, the
config-dataclass bridge, library versions, text/JSONL reading, progress lines, child processes
and a clean Ctrl-C during start-up."""
