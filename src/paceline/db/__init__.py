"""Everything that talks to PostgreSQL: schema, named SQL, the pool, migrations, embedded server.

`db` imports nothing from `web` or `queue`; they import from here.
"""
