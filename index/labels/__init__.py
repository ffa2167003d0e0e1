"""`shoggoth label`: the rules, the statistics, the design, the calibration nulls and the run."""
