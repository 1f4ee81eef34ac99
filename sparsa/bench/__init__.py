"""Benchmarks: kernel and end-to-end timings against dense attention on the same device."""
from .timing import ResultsFile, attention_flops, bench_ms, device_info, once_ms, rel_err

__all__ = ["ResultsFile", "attention_flops", "bench_ms", "device_info", "once_ms", "rel_err"]
