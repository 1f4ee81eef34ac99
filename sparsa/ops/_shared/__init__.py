"""Pieces that several op folders use: kernel input checks and launch shapes, Triton tile steps,
and the token-subset decode reference. Op folders import from here, never from each other."""
