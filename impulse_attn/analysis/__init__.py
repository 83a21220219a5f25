"""Reading attention maps: how convolution-like they are, and how far training moved them from their init."""
from .map_stats import HeadStats, head_stats, map_change

__all__ = ["HeadStats", "head_stats", "map_change"]
