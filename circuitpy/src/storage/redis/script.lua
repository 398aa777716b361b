-- One breaker operation, atomically, on the server's clock.
--
-- KEYS[1]  the breaker's hash, `{prefix}:{key}:state`
-- ARGV     op, threshold, recovery_ms, trials, policy (0 consecutive, 1 count in window,
--          2 rate), window_ms, rate, minimum_calls, bucket_ms, retention_ms, forced_ttl_ms,
--          count (calls a success reports: more than one when local mode held some back)
--
-- Hash fields (all integers; an absent hash is a closed breaker with nothing counted):
--   s       state: 0 closed, 1 open, 2 half-open, 3 forced open, 4 forced closed
--   f, l    closed: failures counted, time of the last failure (count in window)
--   o, d    open: when it opened, when a trial may be asked for
--   p, k, t half-open: permits handed out this round, trials that succeeded, last activity
--   n       how many times the breaker tripped from closed (kept until a reset)
--   bN cN eN  rate policy, slot N = bucket % 10: bucket number, calls, failures
--
-- Reply: {state, permit, retry_in_ms or -1, open_since_ms or -1, failures}
local key = KEYS[1]
local op = ARGV[1]
local threshold = tonumber(ARGV[2])
local recovery = tonumber(ARGV[3])
local trials = tonumber(ARGV[4])
local policy = tonumber(ARGV[5])
local window = tonumber(ARGV[6])
local rate = tonumber(ARGV[7])
local minimum = tonumber(ARGV[8])
local width = tonumber(ARGV[9])
local retention = tonumber(ARGV[10])
local forced_ttl = tonumber(ARGV[11])
local count = tonumber(ARGV[12]) or 1

-- Writes after reading TIME need effects replication: the only mode since Redis 7, to be
-- asked for on older servers.
if redis.replicate_commands then
  redis.replicate_commands()
end

-- A reset clears whatever the key holds, even a value this script did not write.
if op == 'reset' then
  redis.call('DEL', key)
  return {0, 1, -1, -1, 0}
end

-- The current state, validated: every field must be what this script writes. One call
-- reads it; a key of another type answers with an error instead of a table.
local flat = redis.pcall('HGETALL', key)
if flat['err'] then
  return redis.error_reply('CIRCUITPY ' .. key .. ': expected a hash (' .. flat['err'] .. ')')
end
local v = {}
for i = 1, #flat, 2 do
  local n = tonumber(flat[i + 1])
  if n == nil or n ~= math.floor(n) or n < 0 then
    return redis.error_reply('CIRCUITPY ' .. key .. ': field ' .. flat[i]
      .. ' holds ' .. string.sub(flat[i + 1], 1, 40) .. ', expected a count')
  end
  v[flat[i]] = n
end
if v.s ~= nil and v.s > 4 then
  return redis.error_reply('CIRCUITPY ' .. key .. ': unknown state ' .. v.s)
end

local s = v.s or 0
local changed = false
local permit = 0
local reported = nil

-- Every call into the server costs; a closed success outside the rate policy needs no time.
local now = 0
if not (op == 'success' and policy ~= 2 and (s == 0 or s == 4)) then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

local function opened()
  v.s = 1
  v.o = now
  v.d = now + recovery
  v.f, v.l, v.p, v.k, v.t = nil, nil, nil, nil, nil
  for i = 0, 9 do
    v['b' .. i], v['c' .. i], v['e' .. i] = nil, nil, nil
  end
  s = 1
  changed = true
end

local function closed()
  v = {n = v.n}
  s = 0
  changed = true
end

-- Rate policy: count `calls` calls in the current bucket; the window's totals.
local function record(failed, calls_made)
  local bucket = math.floor(now / width)
  local slot = bucket % 10
  if v['b' .. slot] ~= bucket then
    v['b' .. slot], v['c' .. slot], v['e' .. slot] = bucket, 0, 0
  end
  v['c' .. slot] = v['c' .. slot] + calls_made
  if failed then
    v['e' .. slot] = v['e' .. slot] + 1
  end
  changed = true
  local calls, failures = 0, 0
  for i = 0, 9 do
    local b = v['b' .. i]
    if b ~= nil and b <= bucket and b > bucket - 10 then
      calls = calls + (v['c' .. i] or 0)
      failures = failures + (v['e' .. i] or 0)
    end
  end
  return calls, failures
end

-- An open breaker whose recovery timeout passed is ready for a trial round.
local ready = s == 1 and now >= (v.d or 0)

if op == 'success' then
  if s == 0 then
    if policy == 0 and (v.f or 0) > 0 then
      v.f = nil
      changed = true
    elseif policy == 2 then
      local _, failures = record(false, count)
      reported = failures
    end
  end
elseif op == 'failure' then
  if s == 0 then
    local trips = false
    if policy == 0 then
      v.f = (v.f or 0) + 1
      trips = v.f >= threshold
    elseif policy == 1 then
      if (v.f or 0) == 0 or now - (v.l or 0) > window then
        v.f = 0
      end
      v.f = v.f + 1
      v.l = now
      trips = v.f >= threshold
    else
      local calls, failures = record(true, 1)
      reported = failures
      trips = calls >= minimum and failures >= rate * calls
    end
    changed = true
    if trips then
      v.n = (v.n or 0) + 1
      opened()
    end
  end
elseif op == 'acquire' then
  if s == 0 or s == 4 then
    permit = 1
  elseif ready then
    v.s, v.p, v.k, v.t = 2, 1, 0, now
    v.o, v.d = nil, nil
    s = 2
    permit = 1
    changed = true
  elseif s == 2 then
    if (v.p or 0) < trials then
      v.p = (v.p or 0) + 1
      v.t = now
      permit = 1
      changed = true
    elseif now - (v.t or 0) >= recovery then
      -- Every permit of this round is out and none reported for a recovery timeout:
      -- the holders are gone, so a new round starts.
      v.p, v.k, v.t = 1, 0, now
      permit = 1
      changed = true
    end
  end
elseif op == 'trial_success' then
  if s == 2 then
    v.k = (v.k or 0) + 1
    v.t = now
    changed = true
    if v.k >= trials then
      closed()
    end
  end
elseif op == 'trial_failure' then
  if s == 2 then
    opened()
  end
elseif op == 'force_open' then
  v = {s = 3, n = v.n}
  s = 3
  changed = true
elseif op == 'force_closed' then
  v = {s = 4, n = v.n}
  s = 4
  changed = true
end

if changed then
  redis.call('DEL', key)
  local args = {}
  for field, value in pairs(v) do
    if not (field == 's' and value == 0) then
      args[#args + 1] = field
      args[#args + 1] = string.format('%.0f', value)
    end
  end
  if #args > 0 then
    redis.call('HSET', key, unpack(args))
    if s == 3 or s == 4 then
      redis.call('PEXPIRE', key, forced_ttl)
    else
      redis.call('PEXPIRE', key, retention)
    end
  end
end

if s == 1 then
  if now < v.d then
    return {1, 0, v.d - now, now - v.o, 0}
  end
  return {2, 0, -1, -1, 0}
elseif s == 2 then
  return {2, permit, -1, -1, 0}
elseif s == 3 then
  return {3, 0, -1, -1, 0}
elseif s == 4 then
  return {4, 1, -1, -1, 0}
end
return {0, 1, -1, -1, reported or v.f or 0}
