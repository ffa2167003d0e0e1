"""The layer probe stage (`shoggoth layers`): its runner and command; the database side is
index/layers/."""
