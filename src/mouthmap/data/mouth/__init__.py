"""Mouth localisation: several detectors behind one small interface, chosen by name."""

from mouthmap.data.mouth.base import (
    LOCALISERS,
    MouthLocaliser,
    MouthTrack,
    get_localiser,
)

__all__ = ["LOCALISERS", "MouthLocaliser", "MouthTrack", "get_localiser"]
