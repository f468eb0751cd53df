# Makes sql/ importable as pyapp.sql, so an installed wheel ships these files (importlib.resources).
