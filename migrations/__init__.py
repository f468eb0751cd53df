# Makes the Alembic environment importable as pyapp.migrations, so an installed wheel ships it.
