"""Kit(s) for the gce provider(s): being written."""
