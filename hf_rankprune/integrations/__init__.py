"""Integrations with other tools of the ecosystem (serving engines)."""
