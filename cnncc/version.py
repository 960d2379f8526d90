"""The package version, in a module of its own so core modules never import the package face."""
__version__ = "0.1.0"
