-- One fixed OIP v2 inference request, sent over and over by wrk (bench/serving.py).
--
-- Everything comes from the environment so that one script serves every server and
-- encoding; nothing is computed per request, so wrk builds the request once (a script
-- without request()/response() functions keeps wrk on its fast, static path).
--   BENCH_BODY_FILE      the request body (JSON, or JSON followed by raw tensor bytes)
--   BENCH_CONTENT_TYPE   Content-Type of the body
--   BENCH_TOKEN          bearer token (empty: no Authorization header)
--   BENCH_HEADER_LENGTH  Inference-Header-Content-Length (empty: a pure JSON body)

local file = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "application/json"

local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

local header_length = os.getenv("BENCH_HEADER_LENGTH")
if header_length and header_length ~= "" then
  wrk.headers["Inference-Header-Content-Length"] = header_length
end
