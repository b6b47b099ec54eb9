"""Corpus, media IO, mouth ROI, caches, splits and datasets."""
