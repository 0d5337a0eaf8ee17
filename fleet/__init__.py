"""Fleet: keeps fleets of task-queue workers at the size people ask for."""

__version__ = "0.1.0"
