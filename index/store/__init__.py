"""The database itself: schema and contract, connections, SQL, export, merge, status, the
shared reads."""
