"""`shoggoth harvest`: one process, or shards as Ray tasks."""
