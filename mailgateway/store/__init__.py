"""Storage: the SQLAlchemy mapping, engines, sessions and migrations."""
