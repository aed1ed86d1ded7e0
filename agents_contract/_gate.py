"""The pre-call budget gate: reserve a call's cost and step in Redis first; refuse past a hard budget.

The worker judges spend after the fact: the step that crosses a budget has already run, and concurrent agents
of one tenant can all pass a check that each made alone (LiteLLM's per-session budgets are bypassed this way:
BerriAI/litellm issue 34732). The gate closes both gaps with one Lua script per call, run atomically by Redis:
it reads the limits the worker published, checks the session's, the agent's and the tenant's counters against
them with this call's reservation added, and either refuses or adds the reservation to all three. When the
call returns, the reservation is replaced by what the call really cost (`settle`), so the counters track
actual spend. Concurrent callers therefore never reserve more than the budget between them: spend passes it
only by what a call costs beyond its own reservation.

Limits are published by the worker (`publish_limits`) from its `detectors` config: only budgets in `enforce`
mode, in three layers (defaults, per tenant, per agent) that the script lays over each other in the worker's
order. The agent's window is tumbling (it starts at the agent's first reserved spend), an approximation of the
worker's sliding window that is never looser than one window's spend. Redis errors never fail a call: the gate
lets it through and counts the error (`BudgetGate.errors`), and the worker's detectors still judge it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("tripwire.gate")

LIMITS_PREFIX: Final = "tripwire:gate:limits:"
_COUNT_PREFIX: Final = "tripwire:gate:"
_DAY_MS: Final = 86_400_000
_SESSION_TTL_S: Final = 2 * 86_400
LIMIT_FIELDS: Final = (
    "session_budget.max_cost_usd",
    "session_budget.max_steps",
    "session_budget.max_tokens",
    "agent_budget.max_cost_usd",
    "agent_budget.window_s",
    "tenant_daily_budget.max_cost_usd",
)
"""The fields of a limits layer; a value is a number, or "none" for no limit at that layer."""

# KEYS: 1-3 limits (defaults, tenant, agent), 4 session counters, 5 agent counters, 6 tenant-day counters.
# ARGV: 1 reservation (USD), 2 steps (0 or 1), 3 now (ms), 4 session TTL (s), 5 tenant-day TTL (s).
# Returns {1} when reserved, or {0, limit, spent, cap} when refused.
_RESERVE: Final = """
local function limit(field)
  for i = 3, 1, -1 do
    local v = redis.call('HGET', KEYS[i], field)
    if v then
      if v == 'none' then return nil end
      return tonumber(v)
    end
  end
  return nil
end
local usd = tonumber(ARGV[1])
local step = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local function over(spent, cap)
  if cap == nil then return false end
  if usd > 0 then return spent + usd > cap end
  return spent >= cap
end
local s_usd = tonumber(redis.call('HGET', KEYS[4], 'usd') or '0')
local s_steps = tonumber(redis.call('HGET', KEYS[4], 'steps') or '0')
local s_tokens = tonumber(redis.call('HGET', KEYS[4], 'tokens') or '0')
local cap = limit('session_budget.max_cost_usd')
if over(s_usd, cap) then return {0, 'session_budget.max_cost_usd', tostring(s_usd), tostring(cap)} end
cap = limit('session_budget.max_steps')
if cap ~= nil and step > 0 and s_steps + step > cap then
  return {0, 'session_budget.max_steps', tostring(s_steps), tostring(cap)}
end
cap = limit('session_budget.max_tokens')
if cap ~= nil and s_tokens >= cap then
  return {0, 'session_budget.max_tokens', tostring(s_tokens), tostring(cap)}
end
local window = limit('agent_budget.window_s')
local a_cap = limit('agent_budget.max_cost_usd')
local a_usd = 0
if a_cap ~= nil and window ~= nil then
  local since = tonumber(redis.call('HGET', KEYS[5], 'since') or '0')
  if now - since >= window * 1000 then
    redis.call('HSET', KEYS[5], 'since', now, 'usd', 0)
    redis.call('PEXPIRE', KEYS[5], math.floor(window * 2000))
  end
  a_usd = tonumber(redis.call('HGET', KEYS[5], 'usd') or '0')
  if over(a_usd, a_cap) then return {0, 'agent_budget.max_cost_usd', tostring(a_usd), tostring(a_cap)} end
end
cap = limit('tenant_daily_budget.max_cost_usd')
local t_usd = tonumber(redis.call('HGET', KEYS[6], 'usd') or '0')
if over(t_usd, cap) then return {0, 'tenant_daily_budget.max_cost_usd', tostring(t_usd), tostring(cap)} end
if usd > 0 then
  redis.call('HINCRBYFLOAT', KEYS[4], 'usd', usd)
  if a_cap ~= nil and window ~= nil then redis.call('HINCRBYFLOAT', KEYS[5], 'usd', usd) end
  redis.call('HINCRBYFLOAT', KEYS[6], 'usd', usd)
  redis.call('EXPIRE', KEYS[6], tonumber(ARGV[5]))
end
if step > 0 then redis.call('HINCRBY', KEYS[4], 'steps', step) end
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[4]))
return {1}
"""

# KEYS: 4-6 as above (session, agent, tenant-day). ARGV: 1 USD delta (actual - reserved), 2 tokens.
_SETTLE: Final = """
local delta = tonumber(ARGV[1])
if delta ~= 0 then
  redis.call('HINCRBYFLOAT', KEYS[1], 'usd', delta)
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HINCRBYFLOAT', KEYS[2], 'usd', delta) end
  redis.call('HINCRBYFLOAT', KEYS[3], 'usd', delta)
end
local tokens = tonumber(ARGV[2])
if tokens > 0 then redis.call('HINCRBY', KEYS[1], 'tokens', tokens) end
return 1
"""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the gate refused a call: which limit, what was spent (or reserved) and what the cap is."""

    limit: str
    spent: float
    cap: float


@dataclass(slots=True)
class Reservation:
    """A reserved call; `settle` it with the call's actual cost when the call returns."""

    keys: tuple[str, str, str]
    usd: float


def _ref(*parts: str) -> str:
    # Ids may hold ':' and '/', so keys carry a digest of the parts rather than the parts joined.
    return hashlib.blake2b("\x00".join(parts).encode(), digest_size=12).hexdigest()


class BudgetGate:
    """Reserves and settles calls against the published limits, one Redis round trip each."""

    def __init__(self, redis: Redis, *, clock: Any = time.time) -> None:
        self._redis = redis
        self._clock = clock
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self.errors = 0
        self.refused = 0

    async def reserve(
        self, *, session_id: str, agent_id: str, tenant_id: str, usd: float, step: bool
    ) -> Reservation | Refusal | None:
        """Reserve `usd` and a step: a `Reservation`, the refusal, or None when Redis could not be asked
        (the call goes ahead: an outage of Tripwire never stops an agent)."""
        now_ms = int(self._clock() * 1000)
        counters = (
            f"{_COUNT_PREFIX}s:{_ref(tenant_id, session_id)}",
            f"{_COUNT_PREFIX}a:{_ref(tenant_id, agent_id)}",
            f"{_COUNT_PREFIX}t:{_ref(tenant_id)}:{now_ms // _DAY_MS}",
        )
        keys = [
            LIMITS_PREFIX + "default",
            LIMITS_PREFIX + "tenant:" + tenant_id,
            LIMITS_PREFIX + "agent:" + agent_id,
            *counters,
        ]
        try:
            answer = await self._reserve(
                keys=keys, args=[repr(usd), int(step), now_ms, _SESSION_TTL_S, 2 * 86_400]
            )
        except RedisError as exc:
            self._failed(exc)
            return None
        if int(answer[0]) == 1:
            return Reservation(counters, usd)
        self.refused += 1
        limit = answer[1].decode() if isinstance(answer[1], bytes) else str(answer[1])
        return Refusal(limit, float(answer[2]), float(answer[3]))

    async def settle(self, reservation: Reservation, *, usd: float, tokens: int = 0) -> None:
        """Replace the reservation with the call's actual cost and add its tokens."""
        delta = usd - reservation.usd
        if delta == 0 and tokens <= 0:
            return
        try:
            await self._settle(keys=list(reservation.keys), args=[repr(delta), max(0, int(tokens))])
        except RedisError as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.errors == 1 or self.errors % 1000 == 0:
            log.warning(
                "budget gate: Redis could not be asked (%d times so far), calls go ahead: %s",
                self.errors,
                exc,
            )


async def publish_limits(redis: Redis, layers: Mapping[str, Mapping[str, str]]) -> None:
    """Replace the published limits with `layers` ({"default": {...}, "tenant:T": {...}, "agent:A": {...}}),
    in one transaction, so the gate never reads half of an update."""
    old = [key async for key in redis.scan_iter(match=LIMITS_PREFIX + "*", count=500)]
    async with redis.pipeline(transaction=True) as pipe:
        for key in old:
            pipe.delete(key)
        for name, fields in layers.items():
            if fields:
                pipe.hset(LIMITS_PREFIX + name, mapping={k: v for k, v in fields.items()})
        await pipe.execute()
