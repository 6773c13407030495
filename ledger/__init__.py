"""Creditledger server: keeps credit balances and spends them safely."""

__version__ = "0.1.0"
