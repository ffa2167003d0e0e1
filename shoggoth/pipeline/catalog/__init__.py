"""The feature catalog stage (`shoggoth index`): its runner and command; the database side is
index/catalog/."""
