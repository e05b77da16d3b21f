"""Alembic migrations of the incident journal (runbook/journal.py upgrades a journal on first use).

How to add one: docs/operations.md, "Journal migrations".
"""
