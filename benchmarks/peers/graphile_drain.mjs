// graphile-worker's drain with its documented performance configuration
// (https://worker.graphile.org/docs/performance): `jobs` no-op jobs enqueued with addJobs, then
// one runner with `concurrentJobs` workers, a pool of `maxPoolSize`, a local queue of
// `localQueueSize` jobs and completions batched on the next tick. Prints one JSON line.
//
// Run by graphile.py with the peer's scratch folder as the working directory (graphile-worker
// is installed there, not in the project, so it is resolved from there rather than from this
// file's folder):
// `node graphile_drain.mjs DSN JOBS CONCURRENT_JOBS MAX_POOL_SIZE LOCAL_QUEUE_SIZE`.

import { createRequire } from "node:module";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { pathToFileURL } from "node:url";

const ENQUEUE_CHUNK = 1000; // addJobs' batch in the peer's own enqueue figure (34.5k jobs/s)
// stop() can return a moment before the last completion is written: wait for an empty table,
// but not forever (what is left is reported, and the caller rejects the figure).
const EMPTY_WITHIN_MS = 30_000;

const [dsn, jobs, concurrentJobs, maxPoolSize, localQueueSize] = [
  process.argv[2],
  ...process.argv.slice(3, 7).map(Number),
];
const resolve = createRequire(join(process.cwd(), "package.json")).resolve;
const { Logger, makeWorkerUtils, run } = await import(
  pathToFileURL(resolve("graphile-worker")).href
);

// Its default logger writes an info line per job; a drain of no-op jobs would measure the
// console. Warnings and errors still go to stderr (the caller shows the tail if it fails).
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`${level}: ${message}`);
});

const utils = await makeWorkerUtils({ connectionString: dsn, logger });
const count = () =>
  utils.withPgClient(async (client) => {
    const { rows } = await client.query("SELECT count(*)::int AS n FROM graphile_worker._private_jobs");
    return rows[0].n;
  });
await utils.migrate();
for (let start = 0; start < jobs; start += ENQUEUE_CHUNK) {
  const size = Math.min(ENQUEUE_CHUNK, jobs - start);
  await utils.addJobs(Array.from({ length: size }, () => ({ identifier: "noop", payload: {} })));
}
// Fresh statistics for the planner after the bulk insert, as the pgqueuer peer gets.
await utils.withPgClient((client) => client.query("VACUUM ANALYZE graphile_worker._private_jobs"));

let started = 0;
let lastStart = 0;
let allStarted;
const everyJobStarted = new Promise((resolve) => {
  allStarted = resolve;
});

// Just before the worker starts: its start-up (pool, migration check, LISTEN) counts.
const begin = performance.now();
const runner = await run({
  logger,
  noHandleSignals: true,
  taskList: {
    noop: async () => {
      started += 1;
      lastStart = performance.now();
      if (started === jobs) allStarted();
    },
  },
  preset: {
    worker: {
      connectionString: dsn,
      concurrentJobs,
      maxPoolSize,
      localQueue: { size: localQueueSize },
      completeJobBatchDelay: 0,
      failJobBatchDelay: 0,
    },
  },
});
await everyJobStarted;
const seconds = (lastStart - begin) / 1000;

// graphile-worker deletes a job when it completes: an empty table means every job finished.
const deadline = performance.now() + EMPTY_WITHIN_MS;
let left = await count();
while (left > 0 && performance.now() < deadline) {
  await sleep(10);
  left = await count();
}
await runner.stop();
left = await count();
await utils.release();
console.log(JSON.stringify({ jobs: started, left, seconds }));
