"""Data validation: the manifest's contract as a Great Expectations suite."""

from mouthmap.validation.suite import (
    Failure,
    ValidationReport,
    ValidationRules,
    validate_manifest,
)

__all__ = ["Failure", "ValidationReport", "ValidationRules", "validate_manifest"]
