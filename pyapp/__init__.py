"""usersync: keeps a Contacts module synchronized from a Users module, inside PostgreSQL.

The engine lives in the database (sql/); this package is the thin admin layer:
migrations, configuration, the CLI and bulk resync.
"""

__version__ = "0.1.0"
