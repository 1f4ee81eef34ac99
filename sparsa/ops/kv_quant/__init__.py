"""KV quantization: int8 / int4 codes with float16 per-token or per-group parameters.

Quantizing is done once per token (at prefill, then one token per step), so the PyTorch
implementation serves every device; dequantization is fused into the decode-attention kernels
of :mod:`sparsa.ops.sparse_decode`, which read the codes directly.
"""
from .reference import QuantizedTensor, QuantSpec, dequantize, error_bound, quantize

__all__ = ["QuantSpec", "QuantizedTensor", "dequantize", "error_bound", "quantize"]
