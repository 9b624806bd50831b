-- wrk script: GET /promotions/{id} for ids known to be in the generation
-- (90%) and random ids that are not (10%).
-- Usage: IDS=bench-data/10m.ids wrk -t2 -c64 -d20s --latency -s scripts/wrk-lookups.lua http://127.0.0.1:1321
local ids = {}
local path = os.getenv("IDS") or "ids.txt"
for line in io.lines(path) do
  ids[#ids + 1] = "/promotions/" .. line
end
if #ids == 0 then
  error("no ids in " .. path)
end

-- Each wrk thread has its own Lua state: give each its own random ids.
local thread_count = 0
setup = function(thread)
  thread_count = thread_count + 1
  thread:set("seed", thread_count)
end

init = function(args)
  math.randomseed(os.time() * 1000 + (seed or 0))
end

local counter = 0
request = function()
  counter = counter + 1
  if counter % 10 == 0 then
    -- An absent id: version-4 shaped, random hex.
    local absent = string.format("/promotions/%08x-%04x-4%03x-8%03x-%012x",
      math.random(0, 0x7fffffff), math.random(0, 0xffff), math.random(0, 0xfff),
      math.random(0, 0xfff), math.random(0, 0xffffffffff))
    return wrk.format("GET", absent)
  end
  return wrk.format("GET", ids[math.random(1, #ids)])
end
