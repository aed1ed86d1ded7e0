"""Pure detection logic: session state in, event in, verdicts out.

Nothing here does I/O or imports Faust, Kafka or Redis; time comes from events or an injected clock. The
worker (`streams`) and offline tools call the same `DetectorSuite`.
"""

from detectors._ceilings import CeilingLimits, CostCeiling, StepCeiling, TokenCeiling, ceilings
from detectors._state import SessionState
from detectors._suite import Clock, Detector, DetectorSuite, Observation, wall_clock
from detectors._verdict import FailureClass, Verdict

__all__ = [
    "CeilingLimits",
    "Clock",
    "CostCeiling",
    "Detector",
    "DetectorSuite",
    "FailureClass",
    "Observation",
    "SessionState",
    "StepCeiling",
    "TokenCeiling",
    "Verdict",
    "ceilings",
    "wall_clock",
]
