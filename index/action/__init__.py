"""The context × content analysis (`shoggoth generate` and `grid`): its tables, statistics
and labels."""
