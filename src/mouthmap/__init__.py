"""MouthMap: lip reading small enough for a phone, and the MLOps platform around it."""

__version__ = "0.1.0"
