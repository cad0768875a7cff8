"""Merging: methods (registered with their typed parameters), the tensor plan, the in-memory merger, path models and
the streaming export. Importing the package registers the built-in methods (merge/methods.py) once."""

from evomerge.merge import methods  # noqa: F401
