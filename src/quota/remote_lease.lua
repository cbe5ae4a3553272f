-- Grants one lease from a key's sliding window, atomically (Redis runs a script alone).
-- The same rules as `window.rs` + `local.rs`, over slots every gateway process shares:
-- slot s = [s*600, (s+1)*600) ms of UNIX time. A slot's count lives in a hash field.
--
-- KEYS[1]: request counts (hash: slot -> count); KEYS[2]: token counts.
-- ARGV: cur, slot (cur or cur+1), span (slots a limit holds over), request limit,
--       burst (0: none), token limit (0: none), tokens needed, lease share, ttl ms.
-- Returns {1, requests, tokens (-1: no token limit), remaining, reset slot, tokens left (-1)}
--      or {0, reason (1: requests, 2: tokens), slot a retry succeeds in, reset slot}.
local cur, slot, span = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local req_limit, burst = tonumber(ARGV[4]), tonumber(ARGV[5])
local tok_limit, tok_need = tonumber(ARGV[6]), tonumber(ARGV[7])
local share, ttl = tonumber(ARGV[8]), tonumber(ARGV[9])

-- {slot = count} of the slots still in some span; the rest is deleted on the way.
local function load(key)
  local counts, stale = {}, {}
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    local s = tonumber(flat[i])
    if s + span <= cur then
      stale[#stale + 1] = flat[i]
    else
      counts[s] = tonumber(flat[i + 1])
    end
  end
  if #stale > 0 then
    redis.call('HDEL', key, unpack(stale))
  end
  return counts
end

-- Sum over the span ending at slot e.
local function span_sum(counts, e)
  local sum = 0
  for s, c in pairs(counts) do
    if s <= e and s + span > e then
      sum = sum + c
    end
  end
  return sum
end

-- What may still be counted in `slot` without any span containing it going over.
local function available(counts, limit, b)
  local worst = 0
  for e = slot, math.max(cur + 1, slot) do
    worst = math.max(worst, span_sum(counts, e))
  end
  local avail = limit - worst
  if b > 0 then
    avail = math.min(avail, b - (counts[slot] or 0))
  end
  return math.max(avail, 0)
end

-- The first slot after cur in which `need` is available if nothing more is counted.
local function next_free(counts, need, limit, b)
  for e = cur + 1, cur + 1 + span do
    local avail = limit - span_sum(counts, e)
    if b > 0 then
      avail = math.min(avail, b - (counts[e] or 0))
    end
    if avail >= need then
      return e
    end
  end
  return cur + 1 + span
end

-- The slot at whose start everything counted has left the span.
local function reset_slot(counts)
  local last = nil
  for s, c in pairs(counts) do
    if c > 0 and (last == nil or s > last) then
      last = s
    end
  end
  if last == nil then
    return cur
  end
  return last + span
end

local reqs = load(KEYS[1])
local toks = nil
if tok_limit > 0 then
  toks = load(KEYS[2])
end
local function reset()
  local r = reset_slot(reqs)
  if toks then
    r = math.max(r, reset_slot(toks))
  end
  return r
end

local avail = available(reqs, req_limit, burst)
if avail == 0 then
  return {0, 1, next_free(reqs, 1, req_limit, burst), reset()}
end
local tokens, tok_left = -1, -1
if toks then
  local need = math.max(1, math.min(tok_need, tok_limit))
  local tok_avail = available(toks, tok_limit, 0)
  if tok_avail < need then
    return {0, 2, next_free(toks, need, tok_limit, 0), reset()}
  end
  tokens = math.min(math.max(math.floor(tok_avail / share), need), tok_avail)
  redis.call('HINCRBY', KEYS[2], ARGV[2], tokens)
  redis.call('PEXPIRE', KEYS[2], ttl)
  toks[slot] = (toks[slot] or 0) + tokens
  tok_left = tok_avail - tokens
end
local requests = math.max(math.floor(avail / share), 1)
redis.call('HINCRBY', KEYS[1], ARGV[2], requests)
redis.call('PEXPIRE', KEYS[1], ttl)
reqs[slot] = (reqs[slot] or 0) + requests
return {1, requests, tokens, avail - requests, reset(), tok_left}
