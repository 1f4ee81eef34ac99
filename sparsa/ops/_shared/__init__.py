"""Pieces that several op folders use: kernel input checks and launch shapes, Triton tile steps,
the token-subset decode reference, the masks and masked-attention spec (with its SDPA executor),
and the quantized KV format. Op folders import from here, never from each other."""
