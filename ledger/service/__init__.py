"""Use cases: one mutating command = one SERIALIZABLE transaction (batched)."""
