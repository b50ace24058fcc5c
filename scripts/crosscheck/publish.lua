-- wrk script: each request publishes one event to Reelay, shaped like real traffic.
-- EVENT=player (player_log_event) or EVENT=change (asset-updated, changes a video);
-- every guid is a distinct UUID (thread number and a counter in its last groups).
local kind = os.getenv("EVENT") or "change"
local batch = tonumber(os.getenv("BATCH") or "1")
local account = os.getenv("ACCOUNT") or "crosscheck"
local token = os.getenv("TOKEN") or ""
local threads = {}
local counter = 0
-- thread_id is a global each thread gets from setup() (a local here would shadow it, and
-- both threads would send the same guids, which Reelay rightly de-duplicates).

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() + thread_id * 7919)
  prefix = string.format("%08x-%04x-4%03x-a%03x-%04x", math.random(0, 0x7fffffff),
    math.random(0, 0xffff), math.random(0, 0xfff), math.random(0, 0xfff), thread_id)
end

local function timestamp()
  return os.date("!%Y-%m-%dT%H:%M:%S") .. string.format(".%03dZ", counter % 1000)
end

local function event()
  counter = counter + 1
  local guid = string.format("%s%08x", prefix, counter)
  local asset = 800000 + counter % 10000
  if kind == "player" then
    return string.format('{"eventName":"player_log_event","originator":"vimond-player-web-7d9f8c6b5-x2kqp",' ..
      '"versions":["1.0"],"timestamp":"%s","guid":"%s","assetId":%d,' ..
      '"userId":"user-%d","logType":"progress","progress":{"position":%d,"duration":3600},' ..
      '"device":{"type":"web","os":"macOS 14","player":"vimond-web 5.2.1"}}',
      timestamp(), guid, asset, 100000 + counter % 5000, counter % 3600)
  end
  return string.format('{"eventName":"asset-updated","originator":"vimond-rest-api-57484499fc-lkn8x:8080",' ..
    '"versions":["1.0"],"timestamp":"%s","guid":"%s","assetId":%d,' ..
    '"properties":{},"metadata":{"image-pack":{"*":"63282a0be4b09ae28a6d36fd-%d"}}}',
    timestamp(), guid, asset, 1663576590106 + counter)
end

-- One event, or a JSON array of BATCH events.
local function body()
  if batch <= 1 then
    return event()
  end
  local events = {}
  for i = 1, batch do
    events[i] = event()
  end
  return "[" .. table.concat(events, ",") .. "]"
end

function request()
  return wrk.format("POST", "/v1/accounts/" .. account .. "/events",
    {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}, body())
end

function response(status, headers, body)
  if status ~= 202 then
    io.stderr:write("publish answered " .. status .. ": " .. body .. "\n")
  end
end
