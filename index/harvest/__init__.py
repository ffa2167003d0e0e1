"""The database side of `shoggoth harvest`: the target database and the partial file a harvest
writes on the way (store.py)."""
