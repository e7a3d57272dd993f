"""The PostgreSQL status database: connections, migrations and queries."""
