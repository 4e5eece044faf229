"""Persistence: tables, engine and the one repository every write goes through (no FastAPI, no torch)."""
