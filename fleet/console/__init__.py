"""The web console (`fleet console`): what Fleet knows, in a browser and as JSON. See app.py."""

from fleet.console.app import ConsoleSettings, create_app, serve

__all__ = ["ConsoleSettings", "create_app", "serve"]
