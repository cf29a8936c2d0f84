"""IP pools, blocks, affinities, allocation and GC over the datastore."""
