"""The declarations behind platform/settings.py, one module per part of tuneloop."""
