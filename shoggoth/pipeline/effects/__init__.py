"""`shoggoth effects` and `steer`: causal evidence at the SAE's hook."""
