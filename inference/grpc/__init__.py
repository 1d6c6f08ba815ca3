"""Open Inference Protocol v2 over gRPC: the service `inference.GRPCInferenceService` (predict_v2.proto).

The messages and service classes (predict_v2_pb2*.py) are generated: `make grpc-stubs`.
"""
