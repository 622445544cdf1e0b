"""The Lua scripts behind shared routing state (`shared_state.py`): each runs atomically in
Redis, so what replicas decide through them is decided once, in one order."""

from __future__ import annotations

# KEYS: home key, queued-work hash, log stream. ARGV: origin, tenant, id, ttl, log length,
# work (reserved on a home another replica holds), expected home ('' for none), 'home' to claim
# the home (else this request only), then the candidates, best first, each as three: engine,
# bias, work. Of the candidates, the one whose prefill reserved by every replica plus its bias
# (what its cache does not hold, weighted) is least gets its work reserved; a home another
# replica holds wins over them.
RESERVE_SCRIPT = """
if ARGV[8] == 'home' then
  local current = redis.call('GET', KEYS[1])
  if current and current ~= ARGV[7] then
    redis.call('EXPIRE', KEYS[1], ARGV[4])
    redis.call('HINCRBYFLOAT', KEYS[2], current, ARGV[6])
    return current
  end
end
local best, least, work = nil, nil, nil
for i = 9, #ARGV, 3 do
  local cost = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0') + tonumber(ARGV[i + 1])
  if best == nil or cost < least then best, least, work = ARGV[i], cost, ARGV[i + 2] end
end
redis.call('HINCRBYFLOAT', KEYS[2], best, work)
if ARGV[8] == 'home' then
  redis.call('SET', KEYS[1], best, 'EX', ARGV[4])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'k', 'h', 'o', ARGV[1], 'e', best,
             't', ARGV[2], 'c', ARGV[3])
end
return best
"""

# KEYS: queued-work hash. ARGV: engine, work (negative: a first token releasing it). A release
# never takes an engine below nothing: work the decay below shrank since it was reserved would
# otherwise leave a negative balance, and an engine with one looks less loaded than an idle
# one, so a burst of new conversations herds onto it.
RELEASE_SCRIPT = """
local left = tonumber(redis.call('HINCRBYFLOAT', KEYS[1], ARGV[1], ARGV[2]))
if left < 0 then
  redis.call('HSET', KEYS[1], ARGV[1], 0)
  return '0'
end
return tostring(left)
"""

# KEYS: queued-work hash, the time of its last decay. ARGV: now, least seconds between decays,
# half-life. Work a dead replica reserved fades instead of weighing on its engine for ever.
DECAY_SCRIPT = """
local now = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if now - last < tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
if last == 0 then return 0 end
local factor = 0.5 ^ ((now - last) / tonumber(ARGV[3]))
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local value = tonumber(all[i + 1]) * factor
  if value < 0.01 then value = 0 end
  redis.call('HSET', KEYS[1], all[i], value)
end
return 1
"""
DECAY_EVERY_S = 2.0
