"use strict";
// Shared by the pages. Everything shown comes from paceline's JSON and is written with
// textContent or as attributes, never parsed as HTML. What a page's script needs from the
// server (its URLs, built from route names) is in data-* attributes of <body>: the pages carry
// no inline script, so their Content-Security-Policy allows scripts from /static only.
const pageData = document.body.dataset;
const objectUrlTemplate = pageData.objectUrlTemplate;
const defaultKind = pageData.defaultKind;
// A payload or result longer than this (as pretty JSON) is collapsed to its beginning.
const JSON_SHOWN = 200;

// Ids are 64-bit integers: JSON numbers beyond 2^53 are kept as their exact digits, not rounded
// to a neighbour's id.
function parseJson(text) {
  return JSON.parse(text, (key, value, context) =>
    typeof value === "number" && !Number.isSafeInteger(value) && context
      && /^-?\d+$/.test(context.source) ? context.source : value);
}

// The same text with every number kept as the digits the server sent (JSON.rawJSON), so that a
// payload is shown as it was stored, not as a double would round it.
function parseExactJson(text) {
  if (typeof JSON.rawJSON !== "function") return JSON.parse(text);
  return JSON.parse(text, (key, value, context) =>
    typeof value === "number" && context ? JSON.rawJSON(context.source) : value);
}

// A JSON value (a payload, a result) under a label, pretty-printed; a long one is collapsed
// to its first JSON_SHOWN characters. Text only: nothing in it becomes markup.
function jsonBlock(label, value) {
  const compact = JSON.stringify(value);
  const long = compact.length > JSON_SHOWN;
  const block = document.createElement(long ? "details" : "div");
  const heading = document.createElement(long ? "summary" : "div");
  heading.textContent = long
    ? `${label}, ${count(compact.length)} characters: ${compact.slice(0, JSON_SHOWN)}…`
    : `${label}:`;
  const pre = document.createElement("pre");
  pre.className = "json";
  pre.textContent = JSON.stringify(value, null, 2);
  block.className = "json";
  block.dataset.field = label.toLowerCase();
  block.append(heading, pre);
  return block;
}

async function problemText(response) {
  try { const body = await response.json(); return body.detail || response.statusText; }
  catch { return response.statusText; }
}

// Times are shown in the viewer's time zone; the exact UTC value is in the tooltip.
function localTime(iso) {
  if (!iso) return "";
  const when = new Date(iso);
  const sameDay = when.toDateString() === new Date().toDateString();
  return sameDay ? when.toLocaleTimeString() : when.toLocaleString();
}

function timeElement(iso) {
  const element = document.createElement("time");
  element.dateTime = iso;
  element.title = iso;
  element.textContent = localTime(iso);
  return element;
}

// A table cell (or any element) holding a time; the element itself carries the UTC tooltip.
function putTime(element, iso) {
  element.replaceChildren(iso ? timeElement(iso) : "");
  element.title = iso || "";
  return element;
}

function seconds(iso) { return new Date(iso).getTime() / 1000; }

function duration(total) {
  if (total === null || total === undefined) return "";
  const sign = total < 0 ? "-" : "";
  let s = Math.abs(total);
  if (s < 10) return `${sign}${s.toFixed(s < 1 ? 3 : 1)} s`;
  s = Math.round(s);
  if (s < 60) return `${sign}${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${sign}${m} min ${String(s % 60).padStart(2, "0")} s`;
  return `${sign}${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

function count(value) { return value === null || value === undefined ? "—" : value.toLocaleString(); }

// An object's page is about one kind of its jobs; the default kind needs no query.
function objectUrl(objectId, kind) {
  const url = objectUrlTemplate.replace("__object_id__", encodeURIComponent(objectId));
  return kind && kind !== defaultKind ? `${url}?${new URLSearchParams({kind})}` : url;
}

// A job's own page: its payload, result, attempts and actions.
function jobLink(jobId) {
  const link = document.createElement("a");
  link.href = pageData.jobPageTemplate.replace("__object_id__", encodeURIComponent(jobId));
  link.textContent = jobId;
  return link;
}

function objectLink(objectId, kind) {
  const link = document.createElement("a");
  link.href = objectUrl(objectId, kind);
  link.textContent = objectId;
  return link;
}

function cell(row, content, className) {
  const td = row.insertCell();
  if (content instanceof Node) td.append(content); else td.textContent = content ?? "";
  if (className) td.className = className;
  return td;
}

// Refill the table `selector` (its tbody): a row per item through addRow(row, item), or one
// row saying `emptyText`.
function fillTable(selector, items, addRow, emptyText) {
  const body = document.querySelector(`${selector} tbody`);
  body.replaceChildren();
  for (const item of items) addRow(body.insertRow(), item);
  if (!items.length) emptyRow(body, emptyText);
}

// "There is nothing here" as one row across the whole table.
function emptyRow(body, text) {
  const td = body.insertRow().insertCell();
  td.colSpan = body.parentElement.tHead.rows[0].cells.length;
  td.className = "note";
  td.textContent = text;
}
