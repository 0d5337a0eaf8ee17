"""`fleet demo`: the bundled example (config, job app and the script that drives them)."""
