"""Kit(s) for the aws provider(s): being written."""
