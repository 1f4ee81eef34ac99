from .reference import pages_to_tokens, sparse_decode_ref

__all__ = ["pages_to_tokens", "sparse_decode_ref"]
