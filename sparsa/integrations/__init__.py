"""Integrations with other libraries; each subpackage imports its library only when imported."""
