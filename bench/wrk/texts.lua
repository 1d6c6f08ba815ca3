-- OIP v2 text requests of mixed lengths, sent round-robin by wrk (bench/text.py).
--
--   BENCH_BODIES_FILE  one JSON request body per line
--   BENCH_TOKEN        bearer token (empty: no Authorization header)
-- Each wrk thread has its own Lua state and walks the list from its own offset; the bodies
-- are formatted once at start-up, so a request costs wrk a table lookup.

local token = os.getenv("BENCH_TOKEN")
local headers = {["Content-Type"] = "application/json"}
if token and token ~= "" then
  headers["Authorization"] = "Bearer " .. token
end

local requests = {}
local index = 0

function init(args)
  for line in io.lines(os.getenv("BENCH_BODIES_FILE")) do
    if line ~= "" then
      requests[#requests + 1] = wrk.format("POST", nil, headers, line)
    end
  end
  index = math.random(#requests)
end

function request()
  index = index % #requests + 1
  return requests[index]
end
