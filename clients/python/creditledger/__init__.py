"""Generated Creditledger protobuf packages (see creditledger.v1)."""
