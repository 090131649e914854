"""crashcart: debug a running container that has no tools in it."""

__version__ = "0.1.0"
