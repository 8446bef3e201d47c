"""HTTP/2 with prior knowledge (gRPC): a frame relay with a sans-IO session."""
