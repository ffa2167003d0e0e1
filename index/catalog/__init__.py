"""`shoggoth index`, the database side: FAISS similarity, neighbours, handles and maps."""
