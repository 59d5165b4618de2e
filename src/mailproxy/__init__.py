"""trio-mailproxy: a Trio mail login proxy and a sans-io mail protocol library."""

__version__ = "0.1.0"
