"""What every layer uses and nothing model- or database-specific: errors, atomic files, the
config-dataclass bridge, library versions and text/JSONL reading."""
