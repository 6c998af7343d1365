"""ONNX export."""
