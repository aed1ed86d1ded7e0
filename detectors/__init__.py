"""Pure detection logic: session state in, event in, verdicts out. No I/O; time comes from the events or an
injected clock, so the worker, `tripwire replay` and the tests run the same code."""

from detectors._ceilings import CeilingLimits, CostCeiling, StepCeiling, TokenCeiling, ceilings
from detectors._context import ContextBlowup
from detectors._errors import ErrorBurst, ErrorPropagation
from detectors._keyed import (
    STAGES,
    AgentRollingBudget,
    ContentOwnership,
    KeyedDetector,
    KeyedPolicy,
    KeyedSet,
    MemoryNamespace,
    StageRecord,
    TenantDailyBudget,
    ToolCircuit,
    pack_stage_records,
    stage_records,
    unpack_stage_records,
)
from detectors._loops import (
    AgentPingPong,
    CyclicPattern,
    Monologue,
    NoProgress,
    RepeatedError,
    RepeatedToolCall,
)
from detectors._pace import BurnRate, MemoryWriteAmplification, SessionDeadline
from detectors._settings import (
    DetectorSettings,
    KeyProblems,
    build_keyed_policy,
    build_policy,
    keyed_detectors,
    session_detectors,
)
from detectors._stalls import Deadlock, Stall
from detectors._state import SessionState
from detectors._suite import (
    Armed,
    Clock,
    Detector,
    DetectorSet,
    DetectorSuite,
    Observation,
    Policy,
    TimedDetector,
    verdict,
    wall_clock,
)
from detectors._verdict import MODES, FailureClass, Mode, Verdict

__all__ = [
    "MODES",
    "STAGES",
    "AgentPingPong",
    "AgentRollingBudget",
    "Armed",
    "BurnRate",
    "CeilingLimits",
    "Clock",
    "ContentOwnership",
    "ContextBlowup",
    "CostCeiling",
    "CyclicPattern",
    "Deadlock",
    "Detector",
    "DetectorSet",
    "DetectorSettings",
    "DetectorSuite",
    "ErrorBurst",
    "ErrorPropagation",
    "FailureClass",
    "KeyProblems",
    "KeyedDetector",
    "KeyedPolicy",
    "KeyedSet",
    "MemoryNamespace",
    "MemoryWriteAmplification",
    "Mode",
    "Monologue",
    "NoProgress",
    "Observation",
    "Policy",
    "RepeatedError",
    "RepeatedToolCall",
    "SessionDeadline",
    "SessionState",
    "StageRecord",
    "Stall",
    "StepCeiling",
    "TenantDailyBudget",
    "TimedDetector",
    "TokenCeiling",
    "ToolCircuit",
    "Verdict",
    "build_keyed_policy",
    "build_policy",
    "ceilings",
    "keyed_detectors",
    "pack_stage_records",
    "session_detectors",
    "stage_records",
    "unpack_stage_records",
    "verdict",
    "wall_clock",
]
