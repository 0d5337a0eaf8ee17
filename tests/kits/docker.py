"""Kit(s) for the docker provider(s): being written."""
