-- Reads one breaker for the admin (circuitpy/src/admin), changing nothing: the server's
-- clock, the key's expiry and type, and the hash's fields if it is a hash.
--
-- KEYS[1]  the breaker's hash, `{prefix}:{key}:state`
-- Reply: {now_ms, pttl_ms, type, field, value, field, value, ...}, all strings.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local kind = redis.call('TYPE', KEYS[1])['ok']
local reply = {string.format('%.0f', now), tostring(redis.call('PTTL', KEYS[1])), kind}
if kind == 'hash' then
  for _, item in ipairs(redis.call('HGETALL', KEYS[1])) do
    reply[#reply + 1] = item
  end
end
return reply
