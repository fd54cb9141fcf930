"""The model's second opinion on the detector's call, from its classification.

The detector names a defect class; the model classifies the same crop into the station's
classes, `other` or `no_defect`. Its verdict on the detector's call is what every surface
shows (`VlmResult.verdict`): it informs, it decides nothing. A disputed incident stays open for
a person, and the quality figures keep counting the detector's call (the false-reject rate
comes from operators' verdicts only).
"""

from __future__ import annotations

from ..events import Classification, VlmVerdict

__all__ = ["NO_DEFECT", "verdict_of"]

NO_DEFECT = "no_defect"  # the model's class for "nothing wrong here"


def verdict_of(detected_class: str, classification: Classification | None) -> VlmVerdict | None:
    """`confirmed` when the model names the detector's class, `disputed` when it sees no defect,
    `reclassified` for another class or `other`; None without a classification."""
    if classification is None:
        return None
    if classification.defect_type == NO_DEFECT:
        return VlmVerdict.DISPUTED
    if classification.defect_type == detected_class:
        return VlmVerdict.CONFIRMED
    return VlmVerdict.RECLASSIFIED
