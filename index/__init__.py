"""Feature-database work (DuckDB + FAISS). Populated by the harvest, label and index issues."""
