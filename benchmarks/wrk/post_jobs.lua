-- wrk script: POST /jobs with a random object id per request, spread over the replicas; or,
-- with BENCH_BATCH, a JSON array of that many jobs per request (batch enqueue).
--
-- Environment (wrk passes no arguments to setup(), so the harness uses variables):
--   BENCH_PORTS         comma-separated ports of the replicas; thread i talks to port i mod n
--   BENCH_OBJECTS       object ids are drawn from 1..BENCH_OBJECTS (default 10^12: distinct)
--   BENCH_OBJECT_BASE   added to every object id (keeps scenarios' objects apart)
--   BENCH_LIMIT         stop each thread after this many responses (default: run for -d)
--   BENCH_DELAY_MS      pause before each request on a connection (pacing, fractional ok)
--   BENCH_BATCH         send arrays of this many jobs; every 10th repeats an object already in
--                       its array, so the slots of repeats inside one batch are exercised too
--   BENCH_PAYLOAD_BYTES every job carries the payload {"customer": <its object id>, "note": "xx.."}
--                       of exactly this many bytes as compact JSON (default: no payload)
--   BENCH_SCHEDULED     this share of the jobs (0..1) asks "not_before" an hour ahead (a
--                       scheduled job, which the exact planner places)
-- At the end it prints one line, `WRK_JSON {...}`, that the harness parses.

local ports = {}
for port in string.gmatch(os.getenv("BENCH_PORTS") or "", "%d+") do
    ports[#ports + 1] = port
end
local objects = tonumber(os.getenv("BENCH_OBJECTS") or "") or 1e12
local base = tonumber(os.getenv("BENCH_OBJECT_BASE") or "") or 0
local limit = tonumber(os.getenv("BENCH_LIMIT") or "")
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "")
local batch = tonumber(os.getenv("BENCH_BATCH") or "")
local payload_bytes = tonumber(os.getenv("BENCH_PAYLOAD_BYTES") or "")
local scheduled = tonumber(os.getenv("BENCH_SCHEDULED") or "")

local created = 0
function setup(thread)
    created = created + 1
    thread:set("thread_number", created)
    if #ports > 0 then
        thread.addr = wrk.lookup("127.0.0.1", ports[(created - 1) % #ports + 1])[1]
    end
end

local headers = { ["Content-Type"] = "application/json" }

function init(args)
    math.randomseed(os.time() * 1000 + (thread_number or 0))
end

-- Up to 10^12 without losing precision in a double: two draws of 10^6.
local function object_id()
    if objects <= 1e6 then
        return base + math.random(1, objects)
    end
    return base + (math.random(1, 1e6) - 1) * 1e6 + math.random(1, 1e6)
end

-- {"customer":<id>,"note":"x..."}: 23 bytes around the id's digits and the note. The notes are
-- made once per length of id, not per job.
local notes = {}
local function job(id)
    local digits = string.format("%.0f", id)
    if scheduled and math.random() < scheduled then
        return '{"object_id": ' .. digits .. ', "not_before": ' .. (os.time() + 3600) .. '}'
    end
    if not payload_bytes then
        return '{"object_id": ' .. digits .. '}'
    end
    local note = notes[#digits]
    if not note then
        note = string.rep("x", payload_bytes - 23 - #digits)
        notes[#digits] = note
    end
    return '{"object_id": ' .. digits .. ', "payload": {"customer":' .. digits
        .. ',"note":"' .. note .. '"}}'
end

local function batch_body()
    local items = {}
    local ids = {}
    for i = 1, batch do
        local id
        if i % 10 == 0 then
            id = ids[math.random(1, #ids)]
        else
            id = object_id()
            ids[#ids + 1] = id
        end
        items[i] = job(id)
    end
    return "[" .. table.concat(items, ", ") .. "]"
end

function request()
    if batch then
        return wrk.format("POST", "/jobs", headers, batch_body())
    end
    return wrk.format("POST", "/jobs", headers, job(object_id()))
end

if pause then
    -- Dither the integer milliseconds wrk accepts so the mean pause is `pause`.
    function delay()
        return math.floor(pause + math.random())
    end
end

if limit then
    local seen = 0
    function response(status, headers, body)
        seen = seen + 1
        if seen >= limit then
            wrk.thread:stop()
        end
    end
end

function done(summary, latency, requests)
    local errors = summary.errors
    io.write(string.format(
        'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
            .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, '
            .. '"status_errors": %d, "timeouts": %d, '
            .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
        summary.requests, summary.duration, summary.bytes,
        errors.connect, errors.read, errors.write, errors.status, errors.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency.max, latency.mean
    ))
end
