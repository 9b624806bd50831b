-- wrk script: POST /promotions/batch with BATCH (default 1000) ids a
-- request, 90% known to be in the generation and 10% random absent ones,
-- the same mix as wrk-lookups.lua.
-- Usage: IDS=bench-data/ids.txt BATCH=1000 wrk -t2 -c64 -d20s --latency -s scripts/wrk-batch.lua http://127.0.0.1:1321
local ids = {}
local path = os.getenv("IDS") or "ids.txt"
for line in io.lines(path) do
  ids[#ids + 1] = line
end
if #ids == 0 then
  error("no ids in " .. path)
end
local batch = tonumber(os.getenv("BATCH") or "1000")

local thread_count = 0
setup = function(thread)
  thread_count = thread_count + 1
  thread:set("seed", thread_count)
end

init = function(args)
  math.randomseed(os.time() * 1000 + (seed or 0))
end

request = function()
  local parts = {}
  for i = 1, batch do
    if i % 10 == 0 then
      parts[i] = string.format('"%08x-%04x-4%03x-8%03x-%012x"',
        math.random(0, 0x7fffffff), math.random(0, 0xffff), math.random(0, 0xfff),
        math.random(0, 0xfff), math.random(0, 0xffffffffff))
    else
      parts[i] = '"' .. ids[math.random(1, #ids)] .. '"'
    end
  end
  local body = '{"ids":[' .. table.concat(parts, ",") .. ']}'
  return wrk.format("POST", "/promotions/batch", {["Content-Type"] = "application/json"}, body)
end
