"""SimpleVector's storage engine: LMDB state behind a write-ahead log, namespaces and
versions, flat search kernels, metadata filters. Imports neither ops nor bindings."""
