"use strict";
const jobsUrl = pageData.jobsUrl;
const eventsUrl = pageData.eventsUrl;
const PAGE = 20;

function describe(job) {
  const parts = [`job ${job.id}`, `kind ${job.kind}`, `object ${job.object_id}`, job.status,
                 `accepted ${localTime(job.created_at)}`, job.run_at ? `runs at ${localTime(job.run_at)}` : "paused: runs after resume"];
  if (job.error) parts.push(`error: ${job.error}`);
  return parts.join(" · ");
}

// The JSON body of a new job; integers go as typed, since Number() would round large ids.
function jobBody(value) {
  const objectId = /^-?\d+$/.test(value) ? BigInt(value).toString()
                                          : JSON.stringify(Number(value));
  return `{"object_id": ${objectId}}`;
}

// A `read` session's page has no submit box (and no action forms): it may not change anything.
document.getElementById("submit-form")?.addEventListener("submit", async (event) => {
  event.preventDefault();
  const out = document.getElementById("submit-result");
  const value = document.getElementById("submit-object").value;
  const response = await fetch(jobsUrl, {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: jobBody(value),
  });
  out.textContent = response.ok ? `Accepted: ${describe(parseJson(await response.text()))}`
                                : `Refused: ${await problemText(response)}`;
  refresh();
});

document.getElementById("lookup-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const out = document.getElementById("lookup-result");
  const id = document.getElementById("lookup-id").value;
  const response = await fetch(`${jobsUrl}/${encodeURIComponent(id)}`);
  if (!response.ok) {
    out.textContent = await problemText(response);
    return;
  }
  const text = await response.text();
  const line = document.createElement("div");
  line.textContent = describe(parseJson(text));
  out.replaceChildren(line);
  // What the job was given and what its handler returned, with the numbers as stored.
  const {payload, result} = parseExactJson(text);
  if (payload !== null) out.append(jsonBlock("Payload", payload));
  if (result !== null) out.append(jsonBlock("Result", result));
});

// A value the browser refuses to send (1.5, empty) is said next to the form, not only in a
// transient bubble, and does not leave the previous answer standing as if it were this one's.
for (const [input, output] of [["submit-object", "submit-result"], ["lookup-id", "lookup-result"],
                               ["filter-kind", "filter-result"], ["filter-object", "filter-result"]]) {
  document.getElementById(input)?.addEventListener("invalid", (event) => {
    document.getElementById(output).textContent = `Refused: ${event.target.validationMessage}`;
  });
}

// --- The job list, filtered; the filter lives in the address, so a view can be shared. ---

const filterForm = document.getElementById("filter-form");
const filterStatus = document.getElementById("filter-status");
const filterKind = document.getElementById("filter-kind");
const filterObject = document.getElementById("filter-object");
const filterPayload = document.getElementById("filter-payload");
const retryShown = document.getElementById("retry-shown");
const RETRYABLE = ["FAILED", "CANCELLED"];

// Each filter's query parameter and its field. The payload is a JSON object the jobs' payloads
// must contain (GET /jobs?payload=...).
const filters = {status: filterStatus, kind: filterKind, object_id: filterObject, payload: filterPayload};

// "Retry all shown" retries what the applied filter matches: its hidden fields follow the
// address, and it is offered only for statuses that can be retried.
function syncRetryShown() {
  if (!retryShown) return;
  const applied = new URLSearchParams(location.search);
  for (const name of Object.keys(filters)) retryShown.elements.namedItem(name).value = applied.get(name) || "";
  retryShown.elements.namedItem("back").value = location.pathname + location.search;
  retryShown.hidden = !RETRYABLE.includes((applied.get("status") || "").toUpperCase());
}

// The list shows the filter last applied (the one in the address), not what is being typed: a
// value the browser refuses never reaches the list.
function filterQuery() {
  const applied = new URLSearchParams(location.search);
  const query = new URLSearchParams({limit: PAGE});
  for (const name of Object.keys(filters)) if (applied.get(name)) query.set(name, applied.get(name));
  return query;
}

// A payload filter must be a JSON object; anything else is said here, not sent.
function payloadProblem(text) {
  if (!text.trim()) return "";
  try {
    const value = JSON.parse(text);
    if (value !== null && typeof value === "object" && !Array.isArray(value)) return "";
  } catch { /* said below */ }
  return 'Refused: the payload filter must be a JSON object, such as {"customer": 42}.';
}

function applyFilter() {
  if (!filterForm.reportValidity()) return;
  const problem = payloadProblem(filterPayload.value);
  if (problem) {
    document.getElementById("filter-result").textContent = problem;
    return;
  }
  const shown = new URLSearchParams();
  for (const [name, input] of Object.entries(filters)) if (input.value) shown.set(name, input.value);
  const search = shown.toString();
  history.replaceState(null, "", search ? `?${search}` : location.pathname);
  document.getElementById("filter-result").textContent = "";
  syncRetryShown();
  refresh();
}

filterForm.addEventListener("submit", (event) => { event.preventDefault(); applyFilter(); });
filterForm.addEventListener("reset", () => setTimeout(applyFilter));
filterStatus.addEventListener("change", applyFilter);
{
  const initial = new URLSearchParams(location.search);
  for (const [name, input] of Object.entries(filters)) input.value = initial.get(name) || "";
}

// Refreshes can overlap (a submit triggers one between events); only the newest may paint.
let latestRefresh = 0;

async function refresh() {
  const ticket = ++latestRefresh;
  try {
    const response = await fetch(`${jobsUrl}?${filterQuery()}`);
    if (!response.ok) {
      const detail = await problemText(response);
      if (ticket === latestRefresh) document.getElementById("filter-result").textContent = detail;
      return;
    }
    const {jobs} = parseJson(await response.text());
    if (ticket !== latestRefresh) return;
    fillTable("#recent", jobs, (row, job) => {
      row.dataset.jobId = job.id;
      cell(row, jobLink(job.id));
      cell(row, job.kind);
      cell(row, objectLink(job.object_id, job.kind));
      cell(row, job.status, `status-${job.status}`);
      putTime(row.insertCell(), job.run_at);
      putTime(row.insertCell(), job.started_at).className = "wide";
      cell(row, job.duration === null ? "" : `${job.duration.toFixed(3)} s`, "wide");
      cell(row, job.error || "", "wide error");
    }, "No job matches.");
    document.getElementById("refreshed").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    document.getElementById("refreshed").textContent = `Cannot refresh: ${error.message}`;
  }
}

// --- The queue overview, pushed by the server once a second. ---

function setText(id, text, title) {
  const element = document.getElementById(id);
  element.textContent = text;
  if (title !== undefined) element.title = title;
}

function describeQueued(job) {
  const note = document.createDocumentFragment();
  note.append(`job ${job.id} · kind ${job.kind} · object `, objectLink(job.object_id, job.kind),
              " · accepted ", timeElement(job.created_at), " · slot ", job.run_at ? timeElement(job.run_at) : "after resume");
  return note;
}

function showCounts(overview) {
  for (const [status, {count: value, exact, capped}] of Object.entries(overview.counts)) {
    const element = document.getElementById(`count-${status}`);
    if (!element) continue;
    if (exact) {
      element.textContent = capped ? `${count(value)}+` : count(value);
      element.title = capped ? `at least ${count(value)}; counting stops there` : "exact";
    } else {
      element.textContent = value === null ? "—" : `≈ ${count(value)}`;
      element.title = value === null
        ? "Not known until PostgreSQL has analyzed the jobs table."
        : "Estimated from PostgreSQL's table statistics; exact counts of the last minutes are below.";
    }
  }
}

function showWaits(overview) {
  const now = seconds(overview.now);
  const capped = overview.counts.PENDING.capped ? "+" : "";
  setText("due", count(overview.due) + capped);
  setText("waiting", count(overview.waiting) + capped);
  const first = overview.first_due;
  const dueNote = document.getElementById("due-note");
  const waitingNote = document.getElementById("waiting-note");
  dueNote.replaceChildren("past their slot, not started");
  waitingNote.replaceChildren("");
  // A paused key's jobs have no slot (run_at null) until it is resumed.
  if (first && first.run_at && seconds(first.run_at) <= now) {
    dueNote.replaceChildren(`most overdue: job ${first.id} (kind ${first.kind}, object `,
                            objectLink(first.object_id, first.kind),
                            `), ${duration(now - seconds(first.run_at))} past its slot`);
  } else if (first && first.run_at) {
    waitingNote.replaceChildren("next slot ", timeElement(first.run_at),
                                ` (in ${duration(seconds(first.run_at) - now)})`);
  }
  const oldest = overview.oldest_pending;
  setText("oldest-wait", oldest ? duration(now - seconds(oldest.created_at)) : "none");
  document.getElementById("oldest-note").replaceChildren(oldest ? describeQueued(oldest) : "nothing is waiting");
}

function showMinutes(last) {
  const finished = last.SUCCESS + last.FAILED + last.CANCELLED;
  setText("minutes-summary",
          `${count(finished)} finished: ${count(last.SUCCESS)} succeeded, ${count(last.FAILED)} failed`
          + (last.CANCELLED ? `, ${count(last.CANCELLED)} cancelled` : "") + ".");
  const most = Math.max(1, ...last.per_minute.map((m) => m.SUCCESS + m.FAILED + m.CANCELLED));
  const bars = document.getElementById("minutes");
  bars.replaceChildren();
  for (const minute of last.per_minute) {
    const item = document.createElement("li");
    const label = `${new Date(minute.minute).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"})}: `
                  + `${minute.SUCCESS} succeeded, ${minute.FAILED} failed`;
    item.title = label;
    for (const [kind, value] of [["ok", minute.SUCCESS + minute.CANCELLED], ["bad", minute.FAILED]]) {
      const bar = document.createElement("span");
      bar.className = kind;
      bar.style.height = `${(100 * value) / most}%`;
      item.append(bar);
    }
    const text = document.createElement("span");
    text.className = "visually-hidden";
    text.textContent = label;
    item.append(text);
    bars.append(item);
  }
}

function showFailures(failures) {
  fillTable("#failures", failures, (row, failure) => {
    row.dataset.jobId = failure.id;
    cell(row, jobLink(failure.id));
    cell(row, failure.kind);
    cell(row, objectLink(failure.object_id, failure.kind));
    putTime(row.insertCell(), failure.finished_at);
    cell(row, failure.attempts, "wide");
    cell(row, failure.error || "", "error");
  }, "No job has failed.");
}

function showReplicas(replicas, now) {
  fillTable("#replicas", replicas, (row, replica) => {
    row.dataset.replicaId = replica.id;
    // The state first: on a phone it is the column that shows without scrolling.
    cell(row, replica.alive ? "alive" : "dead", replica.alive ? "alive" : "dead");
    cell(row, replica.host);
    cell(row, replica.pid);
    putTime(row.insertCell(), replica.started_at).className = "wide";
    const beat = putTime(row.insertCell(), replica.last_heartbeat);
    beat.append(` (${duration(now - seconds(replica.last_heartbeat))} ago)`);
    cell(row, `${replica.running} of ${replica.concurrency}`);
  }, "No replica with workers is registered.");
}

function showOverview(overview) {
  showCounts(overview);
  showWaits(overview);
  showMinutes(overview.last_minutes);
  showFailures(overview.recent_failures);
  showReplicas(overview.replicas, seconds(overview.now));
}

const stream = new EventSource(eventsUrl);
stream.addEventListener("overview", (event) => {
  showOverview(parseJson(event.data));
  refresh();
});
stream.addEventListener("problem", (event) => {
  document.getElementById("refreshed").textContent = `Cannot refresh: ${parseJson(event.data).detail}`;
});
stream.addEventListener("error", () => {
  document.getElementById("refreshed").textContent = "Cannot refresh: the server is unreachable; reconnecting.";
});
refresh();
