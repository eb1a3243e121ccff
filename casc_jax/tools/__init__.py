"""Tools over the systems: the reproduction jobs, results pages, comparisons and benchmark scripts."""
