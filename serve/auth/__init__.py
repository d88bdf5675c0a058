"""Who is calling: API keys checked against the registry, and the scopes they grant."""
