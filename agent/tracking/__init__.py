"""Tracking: faces followed across frames, and each track's identity decided from several embeddings."""

from agent.tracking.decision import decide, mean_embedding
from agent.tracking.tracker import Track, Tracker

__all__ = ["Track", "Tracker", "decide", "mean_embedding"]
