"use strict";
const timelineUrl = pageData.timelineUrl;

// A kind the browser refuses to send is said next to the form, not only in a transient bubble.
document.getElementById("kind").addEventListener("invalid", (event) => {
  document.getElementById("kind-result").textContent = `Refused: ${event.target.validationMessage}`;
});

// Why a job waits, as the server words it: text, and times shown in the viewer's zone.
function reason(job) {
  const fragment = document.createDocumentFragment();
  fragment.append(...job.wait.reason.map((part) => typeof part === "string" ? part : timeElement(part.time)));
  return fragment;
}

function showWaiting(timeline) {
  fillTable("#waiting", timeline.waiting, (row, job) => {
    row.dataset.jobId = job.id;
    cell(row, jobLink(job.id));
    putTime(row.insertCell(), job.created_at).className = "wide";
    const slot = putTime(row.insertCell(), job.run_at);
    if (!job.run_at) slot.textContent = "after resume";
    cell(row, reason(job), "reason");
  }, "No job of this kind and object is waiting.");
  const total = timeline.waiting_total;
  const shown = timeline.waiting.length;
  document.getElementById("waiting-summary").textContent =
    total === 0 ? "" : `${count(total)}${timeline.waiting_capped ? "+" : ""} job${total === 1 ? "" : "s"} waiting`
                       + (shown < total ? `; the first ${shown} are shown.` : ".");
}

function showRuns(timeline) {
  fillTable("#runs", timeline.runs, (row, run) => {
    row.dataset.jobId = run.job_id;
    cell(row, jobLink(run.job_id));
    cell(row, run.attempt);
    putTime(row.insertCell(), run.started_at);
    const gap = cell(row, run.gap === null ? "" : duration(run.gap), run.too_soon ? "bad" : "");
    if (run.too_soon) gap.append(" — over the limit!");
    putTime(row.insertCell(), run.finished_at).className = "wide";
    cell(row, run.outcome, `status-${run.outcome}`);
    cell(row, run.replica || "", "wide");
    cell(row, run.error || "", "error");
  }, "No job of this kind and object has run yet.");
}

async function refresh() {
  try {
    const response = await fetch(timelineUrl);
    if (!response.ok) throw new Error(await problemText(response));
    const timeline = parseJson(await response.text());
    document.getElementById("limit").textContent = timeline.limit.text;
    putTime(document.getElementById("next-slot"), timeline.next_free_slot);
    if (!timeline.next_free_slot) document.getElementById("next-slot").textContent = "now (it would start at once)";
    putTime(document.getElementById("last-start"), timeline.last_start);
    if (!timeline.last_start) document.getElementById("last-start").textContent = "never";
    showWaiting(timeline);
    showRuns(timeline);
    document.getElementById("refreshed").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    document.getElementById("refreshed").textContent = `Cannot refresh: ${error.message}`;
  }
}

refresh();
setInterval(refresh, 2000);
