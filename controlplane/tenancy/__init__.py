"""Tenancy: users, projects, memberships and roles, API tokens, the audit log."""
