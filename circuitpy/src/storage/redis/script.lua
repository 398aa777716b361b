-- One breaker operation, atomically, on the server's clock. The rules are stated in
-- circuitpy/src/rules/mod.rs; this script does what rules/row.rs does, field for field, and
-- the differential test holds it to that.
--
-- KEYS[1]  the breaker's hash, `{prefix}:{key}:state`
-- ARGV     op, threshold, recovery_ms, trials, policy (0 consecutive, 1 count in window,
--          2 rate), window_ms, rate, minimum_calls, bucket_ms, retention_ms, forced_ttl_ms,
--          count (calls a success reports: more than one when local mode held some back),
--          round (of a trial's outcome, or ''), at_ms (a time given by a test, or ''),
--          actor, reason (who forces the breaker and why, or ''; at most 256 bytes each),
--          (a success without a given time stops after count: the rest read as empty)
--          backoff (the factor per failed trial round; 1 is off), backoff_max_ms,
--          jitter (the share of an open time it may be shortened by; 0 is off), seed (the
--          key's jitter seed), and for `override`: threshold, recovery_ms, trials, backoff
--          factor, backoff_max_ms (0: not overridden; all 0 clears the overrides), then
--          only for a handler with a quorum: quorum, reporter (the failing process's id)
--
-- Hash fields (non-negative integers but fb and fr; no hash is a closed breaker with nothing
-- counted):
--   s       state: 0 closed, 1 open, 2 half-open, 3 forced open, 4 forced closed
--   f, l    closed: failures counted, time of the last failure
--   o, d    open: when it opened, when a trial may be asked for
--   a       open or half-open: when it tripped from closed (kept when a failed trial
--           reopens it)
--   r       the last half-open round's id (its start time, kept across trips)
--   n       open or half-open: failed trial rounds in a row since it last closed (at most
--           31), the backoff's step
--   p, k, t half-open: permits out this round, trials that succeeded, last event
--   w       half-open: the recovery timeout in force at the last event, the round's lease
--   bN cN eN  rate policy, slot N = bucket % 10: bucket number, calls, failures
--   fa      forced: when it was forced (the audit trail, written by force ops only)
--   fb, fr  forced: who forced it and why (text, at most 256 bytes), when the op said
--   xt, xr, xh, xb, xm, xu  an operator's runtime overrides of the threshold, the recovery
--           (ms), the half-open trials and the backoff's factor (xb, the one field that is not
--           a whole number; 1 turns it off) and max (ms), each only when overridden, in force
--           until xu; kept through every transition and a reset
--   qN, uN  quorum: the N-th distinct reporter of the failures counted (N < quorum) and
--           until when its failures count
--
-- Reply: {state, permit, retry_in_ms or -1, open_since_ms or -1, failures, round}
local key = KEYS[1]
local op = ARGV[1]

-- The common case first, before anything else is parsed or built: a success on a breaker
-- that holds nothing (closed, nothing counted, no overrides) changes nothing, outside the
-- rate policy (ARGV[5] = 2), which counts it.
if op == 'success' and ARGV[5] ~= '2' and redis.call('EXISTS', key) == 0 then
  return {0, 1, -1, -1, 0, 0}
end
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
local round = tonumber(ARGV[13])
local at = tonumber(ARGV[14])
local actor = ARGV[15] or ''
local reason = ARGV[16] or ''
local backoff = tonumber(ARGV[17]) or 1
local backoff_max = tonumber(ARGV[18]) or 0
local jitter = tonumber(ARGV[19]) or 0
local seed = tonumber(ARGV[20]) or 0
local set_threshold = tonumber(ARGV[21]) or 0
local set_recovery = tonumber(ARGV[22]) or 0
local set_trials = tonumber(ARGV[23]) or 0
local set_backoff = tonumber(ARGV[24]) or 0
local set_backoff_max = tonumber(ARGV[25]) or 0
local quorum = tonumber(ARGV[26]) or 1
local reporter = tonumber(ARGV[27]) or 0

-- Writes after reading TIME need effects replication: the only mode since Redis 7, to be
-- asked for on older servers.
if redis.replicate_commands then
  redis.replicate_commands()
end

local function invalid(detail)
  return redis.error_reply('CIRCUITPY ' .. key .. ': ' .. detail)
end

local function clock()
  if at ~= nil then
    return at
  end
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- A reset clears whatever the key holds, even a value this script did not write, but for
-- runtime overrides in force, which it keeps.
if op == 'reset' then
  local kept = redis.pcall('HMGET', key, 'xt', 'xr', 'xh', 'xu', 'xb', 'xm')
  redis.call('DEL', key)
  local until_ = type(kept) == 'table' and tonumber(kept[4])
  if until_ then
    local t = clock()
    if until_ > t then
      local args = {'s', '0', 'xu', string.format('%.0f', until_)}
      for i, field in ipairs({'xt', 'xr', 'xh'}) do
        local value = tonumber(kept[i])
        if value then
          args[#args + 1] = field
          args[#args + 1] = string.format('%.0f', value)
        end
      end
      local factor, max = tonumber(kept[5]), tonumber(kept[6])
      if factor and max then
        args[#args + 1] = 'xb'
        args[#args + 1] = string.format('%.17g', factor)
        args[#args + 1] = 'xm'
        args[#args + 1] = string.format('%.0f', max)
      end
      redis.call('HSET', key, unpack(args))
      redis.call('PEXPIRE', key, until_ - t)
    end
  end
  return {0, 1, -1, -1, 0, 0}
end

-- The current state, validated: every field must be one this script writes, holding what
-- it writes. One call reads it; a key of another type answers with an error.
local flat = redis.pcall('HGETALL', key)
if flat['err'] then
  return invalid('expected a hash (' .. flat['err'] .. ')')
end
local known = {s = true, f = true, l = true, o = true, d = true, a = true, r = true,
  p = true, k = true, t = true, w = true, fa = true, n = true, xt = true, xr = true, xh = true,
  xm = true, xu = true}
-- The audit trail's text, kept as it is while the breaker stays forced.
local text = {}
local texts = {fb = true, fr = true}
for i = 0, 9 do
  known['b' .. i], known['c' .. i], known['e' .. i] = true, true, true
end
-- A quorum's reporters, q0 to q15 and u0 to u15: matched only when a field is not known.
local function reporter_field(field)
  return string.match(field, '^[qu]%d$') ~= nil or string.match(field, '^[qu]1[0-5]$') ~= nil
end
local v = {}
for i = 1, #flat, 2 do
  local field, value = flat[i], flat[i + 1]
  if texts[field] then
    if string.len(value) > 256 then
      return invalid('field ' .. field .. ' holds ' .. string.len(value) .. ' bytes, at most 256')
    end
    text[field] = value
  elseif field == 'xb' then
    local factor = tonumber(value)
    if factor == nil or factor < 0 or string.len(value) > 32 then
      return invalid('field xb holds ' .. string.sub(value, 1, 40) .. ', expected a factor')
    end
    v.xb = factor
  elseif not known[field] and not reporter_field(field) then
    return invalid('unknown field ' .. string.sub(field, 1, 40))
  elseif not string.match(value, '^%d+$') or string.len(value) > 15 then
    return invalid('field ' .. field .. ' holds ' .. string.sub(value, 1, 40)
      .. ', expected a count')
  else
    v[field] = tonumber(value)
  end
end
if #flat > 0 then
  if (v.s or 0) > 4 then
    return invalid('unknown state ' .. v.s)
  end
  if v.s == 1 and (v.o == nil or v.d == nil) then
    return invalid('an open breaker without its deadline')
  end
  if v.s == 2 and (v.p == nil or v.k == nil or v.t == nil or v.r == nil) then
    return invalid('a half-open breaker without its round')
  end
  if redis.call('PTTL', key) < 0 then
    return invalid('the hash has no expiry, so circuitpy did not write it')
  end
end

local s = v.s or 0
local changed = false
local permit = 0
local reported = nil

-- Every call into the server costs; a closed success outside the rate policy needs no time.
local now = 0
if at ~= nil then
  now = at
elseif not (op == 'success' and policy ~= 2 and (s == 0 or s == 4) and v.xu == nil) then
  now = clock()
end

-- Runtime overrides in force: kept through whatever this operation does (an override
-- replaces them), and decided by from here on.
local ov = nil
if v.xu ~= nil and v.xu > now then
  ov = {xt = v.xt, xr = v.xr, xh = v.xh, xb = v.xb, xm = v.xm, xu = v.xu}
  if (v.xt or 0) > 0 then
    threshold = v.xt
  end
  if (v.xr or 0) > 0 then
    recovery = v.xr
  end
  if (v.xh or 0) > 0 then
    trials = v.xh
  end
  if (v.xb or 0) > 0 then
    backoff = v.xb
    backoff_max = v.xm or 0
  end
end

-- How long to open after `n` failed trial rounds in a row: rules::open_time, in whole
-- milliseconds, each step rounded down.
local function open_time(n)
  if n == 0 or backoff <= 1 then
    return recovery
  end
  local open = recovery
  -- Never below the recovery timeout: an override may lower the max under it.
  local cap = math.max(backoff_max, recovery)
  for _ = 1, n do
    if open >= cap then
      break
    end
    open = math.min(math.floor(open * backoff), cap)
  end
  return math.min(open, cap)
end

-- Opens after `n` failed trial rounds in a row (0: a trip from closed), shortened by the
-- jitter's share for this key and instant (rules::open_for).
local function opened(n)
  local open = open_time(n)
  if jitter > 0 then
    local x = (seed + now) % 67108864
    for _ = 1, 3 do
      x = (x * 40503 + 12345) % 67108864
      x = math.floor(x * x / 8192) % 67108864
    end
    local share = x / 67108864
    open = open - math.min(math.floor(open * jitter * share), open)
  end
  local d = now + open
  v = {s = 1, o = now, d = d, a = v.a or now, r = v.r}
  if n > 0 then
    v.n = n
  end
  s = 1
  changed = true
end

local function new_round()
  v = {s = 2, r = math.max(now, (v.r or 0) + 1), p = 1, k = 0, t = now, w = recovery, a = v.a,
    n = v.n}
  s = 2
  permit = 1
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

-- The quorum's reporters (rules::row::Row::report): those whose failures no longer count
-- are forgotten, `reporter` is remembered while fewer than the quorum are, and each takes
-- `until` (all of them but under the rate policy, whose failures lapse bucket by bucket).
-- Returns how many are remembered.
local function report(until_)
  local kept = {}
  for i = 0, 15 do
    local id, lapses = v['q' .. i], v['u' .. i]
    if id ~= nil and lapses ~= nil and lapses > now then
      kept[#kept + 1] = {id, lapses}
    end
    v['q' .. i], v['u' .. i] = nil, nil
  end
  local found = false
  for _, entry in ipairs(kept) do
    if policy ~= 2 then
      entry[2] = until_
    end
    if entry[1] == reporter then
      entry[2] = until_
      found = true
    end
  end
  if not found and #kept < quorum then
    kept[#kept + 1] = {reporter, until_}
  end
  for i, entry in ipairs(kept) do
    v['q' .. (i - 1)], v['u' .. (i - 1)] = entry[1], entry[2]
  end
  return #kept
end

-- Reporters are kept from q0 on, so a breaker without q0 has none to forget.
local function forget_reporters()
  if v.q0 == nil then
    return
  end
  for i = 0, 15 do
    v['q' .. i], v['u' .. i] = nil, nil
  end
end

-- An open breaker whose recovery timeout passed is ready for a trial round.
if s == 1 and now >= v.d then
  s = 2
end
-- Whether a trial's outcome belongs to the current round (one without a round does), and
-- the round is not over: nothing happened in it for a recovery timeout.
-- A round's lease is the recovery timeout in force at its last event (w; a runtime override
-- applies to leases taken after it).
local lease = v.w or recovery
local this_round = (round == nil or round == v.r) and v.t ~= nil and now - v.t < lease

if op == 'success' then
  if s == 0 then
    if policy == 0 and (v.f or 0) > 0 then
      v.f, v.l = nil, nil
      forget_reporters()
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
      -- A failure a whole window after the previous one starts a new count.
      if (v.f or 0) == 0 or now - (v.l or 0) >= window then
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
    if quorum > 1 then
      local until_
      if policy == 0 then
        until_ = now + retention
      elseif policy == 1 then
        until_ = now + window
      else
        until_ = (math.floor(now / width) + 10) * width
      end
      trips = report(until_) >= quorum and trips
    end
    changed = true
    if trips then
      v.a = nil
      opened(0)
    end
  end
elseif op == 'acquire' then
  if s == 0 or s == 4 then
    permit = 1
  elseif s == 2 then
    if v.s ~= 2 or now - v.t >= lease then
      -- The first caller after the open period, or a round in which nothing happened for
      -- a recovery timeout: a new round begins.
      new_round()
    elseif v.p < trials then
      v.p = v.p + 1
      v.t, v.w = now, recovery
      permit = 1
      changed = true
    end
  end
elseif op == 'trial_success' then
  if s == 2 and v.s == 2 and this_round then
    v.k = v.k + 1
    v.t, v.w = now, recovery
    changed = true
    if v.k >= trials then
      v = {}
      s = 0
    end
  end
elseif op == 'trial_failure' then
  if s == 2 and v.s == 2 and this_round then
    opened(math.min((v.n or 0) + 1, 31))
  end
elseif op == 'release' then
  if s == 2 and v.s == 2 and this_round and v.p > 0 then
    v.p = v.p - 1
    v.t, v.w = now, recovery
    changed = true
  end
elseif op == 'override' then
  ov = nil
  if set_threshold > 0 or set_recovery > 0 or set_trials > 0 or set_backoff > 0 then
    ov = {xu = now + forced_ttl}
    if set_backoff > 0 then
      ov.xb = set_backoff
      ov.xm = set_backoff_max
    end
    if set_threshold > 0 then
      ov.xt = set_threshold
    end
    if set_recovery > 0 then
      ov.xr = set_recovery
    end
    if set_trials > 0 then
      ov.xh = set_trials
    end
  end
  changed = true
elseif op == 'force_open' or op == 'force_closed' then
  s = op == 'force_open' and 3 or 4
  v = {s = s, r = v.r, fa = now}
  -- Forcing again replaces the whole trail.
  text = {}
  if actor ~= '' then
    text.fb = actor
  end
  if reason ~= '' then
    text.fr = reason
  end
  changed = true
end

if changed then
  v.xt, v.xr, v.xh, v.xb, v.xm, v.xu = nil, nil, nil, nil, nil, nil
  if ov then
    for field, value in pairs(ov) do
      v[field] = value
    end
  end
  redis.call('DEL', key)
  local args = {}
  local counted = false
  for field, value in pairs(v) do
    args[#args + 1] = field
    if field == 'xb' then
      args[#args + 1] = string.format('%.17g', value)
    else
      args[#args + 1] = string.format('%.0f', value)
    end
    if field ~= 's' and field ~= 'r' then
      counted = true
    end
  end
  -- Only a forced breaker keeps its trail; any other write leaves it behind.
  if s == 3 or s == 4 then
    for field, value in pairs(text) do
      args[#args + 1] = field
      args[#args + 1] = value
    end
  end
  -- A closed breaker with nothing counted is no hash at all.
  if s ~= 0 or counted then
    if v.s == nil then
      args[#args + 1] = 's'
      args[#args + 1] = '0'
    end
    redis.call('HSET', key, unpack(args))
    local ttl = retention
    if s == 3 or s == 4 then
      ttl = forced_ttl
    elseif s == 1 then
      -- A backoff's open time may outlast the retention.
      ttl = math.max(retention, v.d - now)
    end
    if ov then
      ttl = math.max(ttl, ov.xu - now)
    end
    redis.call('PEXPIRE', key, ttl)
  end
end

if s == 1 then
  return {1, 0, v.d - now, now - v.o, 0, 0}
elseif s == 2 then
  return {2, permit, -1, -1, 0, permit == 1 and v.r or 0}
elseif s == 3 then
  return {3, 0, -1, -1, 0, 0}
elseif s == 4 then
  return {4, 1, -1, -1, 0, 0}
end
return {0, 1, -1, -1, reported or v.f or 0, 0}
