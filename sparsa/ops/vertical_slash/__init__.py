from .reference import check_vs_indices, vertical_slash_attention_ref

__all__ = ["check_vs_indices", "vertical_slash_attention_ref"]
