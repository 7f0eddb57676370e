"""Device mesh, logical-axis sharding rules and sequence-parallel attention."""
