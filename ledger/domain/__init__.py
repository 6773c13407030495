"""The ledger rules: value types, commands, errors. Standard library only."""
