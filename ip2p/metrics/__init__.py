"""Metrics: CLIP similarities (open_clip), LPIPS, pixel and masked metrics, embedding cache."""
