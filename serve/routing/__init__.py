"""Routing: which version a request's `model` means, following the registry, and what is loaded."""
