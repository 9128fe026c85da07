-- wrk script: POST /jobs with a JSON array of BENCH_BATCH jobs (batch enqueue), spread over
-- the replicas like post_jobs.lua. Every 10th job repeats an object already in the batch, so
-- the per-object slots of repeats inside one batch are exercised too.
--
-- Environment: BENCH_PORTS (as post_jobs.lua), BENCH_BATCH (default 1000).
-- At the end it prints `WRK_JSON {...}` (requests, not jobs: the harness multiplies).

local ports = {}
for port in string.gmatch(os.getenv("BENCH_PORTS") or "", "%d+") do
    ports[#ports + 1] = port
end
local size = tonumber(os.getenv("BENCH_BATCH") or "") or 1000

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

function request()
    local items = {}
    local ids = {}
    for i = 1, size do
        local id
        if i % 10 == 0 then
            id = ids[math.random(1, #ids)]
        else
            id = (math.random(1, 1e6) - 1) * 1e6 + math.random(1, 1e6)
            ids[#ids + 1] = id
        end
        items[i] = string.format('{"object_id": %.0f}', id)
    end
    return wrk.format("POST", "/jobs", headers, "[" .. table.concat(items, ", ") .. "]")
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
