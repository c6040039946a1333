"""Revisions, oldest first; each file's ``down_revision`` names its parent."""
