"""Tracking: photos and videos to FLAME parameters and cameras (offline, mediapipe)."""
