"""Built-in providers, one module each, registered in the `fleet.providers` entry-point group
and imported only when a cluster uses them."""
