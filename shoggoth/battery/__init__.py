"""The model-free persona battery: personas, items, the harvest's units."""
