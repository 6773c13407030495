"""GENERATED code lives beside this file (`make proto`); never edit *_pb2* by hand."""
