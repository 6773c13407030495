"""gRPC transport: grpc and the generated creditledger.v1 modules live here only."""
