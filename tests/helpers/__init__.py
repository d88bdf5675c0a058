"""Test helpers: tiny offline models and adapters, and real servers for fixtures."""
