"""The Integration DB: SQLAlchemy Core tables, migrations and the unit of work."""
