"""Distillation building blocks: losses, feature alignment, meta-weight networks, methods."""
