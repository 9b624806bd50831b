-- wrk script: lookups of ids known to be in the generation (90%) and
-- random ids that are not (10%). Each request is GET /promotions/{id}, or,
-- with BATCH=n, a POST /promotions/batch of n such ids.
-- Usage: IDS=bench-data/10m.ids wrk -t2 -c64 -d20s --latency -s scripts/wrk-lookups.lua http://127.0.0.1:1321
--        IDS=... BATCH=1000 wrk ... (the same, in batches)
local ids = {}
local path = os.getenv("IDS") or "ids.txt"
for line in io.lines(path) do
  ids[#ids + 1] = line
end
if #ids == 0 then
  error("no ids in " .. path)
end
local batch = tonumber(os.getenv("BATCH") or "0")

-- Each wrk thread has its own Lua state: give each its own random ids.
local thread_count = 0
setup = function(thread)
  thread_count = thread_count + 1
  thread:set("seed", thread_count)
end

-- A single GET is the same bytes but the id: build them once, as wrk.format
-- would, and join the id in per request (wrk.format per request costs the
-- client more CPU than the server spends on some lookups).
local head, tail
init = function(args)
  math.randomseed(os.time() * 1000 + (seed or 0))
  local sample = wrk.format("GET", "/promotions/@")
  local at = sample:find("@", 1, true)
  head, tail = sample:sub(1, at - 1), sample:sub(at + 1)
end

-- Every tenth id is absent: version-4 shaped, random hex.
local counter = 0
local function next_id()
  counter = counter + 1
  if counter % 10 == 0 then
    return string.format("%08x-%04x-4%03x-8%03x-%012x",
      math.random(0, 0x7fffffff), math.random(0, 0xffff), math.random(0, 0xfff),
      math.random(0, 0xfff), math.random(0, 0xffffffffff))
  end
  return ids[math.random(1, #ids)]
end

request = function()
  if batch > 0 then
    local parts = {}
    for i = 1, batch do
      parts[i] = '"' .. next_id() .. '"'
    end
    local body = '{"ids":[' .. table.concat(parts, ",") .. ']}'
    return wrk.format("POST", "/promotions/batch", {["Content-Type"] = "application/json"}, body)
  end
  return head .. next_id() .. tail
end
