// smtprelay console: charts, gauges, the suppression import and the live event tail.
// No framework; served from the relay itself (the page's CSP allows nothing else).
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

const COLOURS = {
  accepted: "#4c6ef5", delivered: "#2f9e44", deferred: "#f59f00",
  bounced: "#e03131", complained: "#ae3ec9",
};

function drawChart(holder) {
  if (typeof uPlot === "undefined") return;
  const data = JSON.parse(holder.dataset.json);
  const names = Object.keys(data.series);
  const count = names.length ? data.series[names[0]].length : 0;
  const times = Array.from({length: count}, (_, i) => data.start + i * data.step);
  const options = {
    width: Math.max(300, holder.clientWidth), height: 220,
    scales: {x: {time: true}, y: {range: (u, min, max) => [0, Math.max(4, max)]}},
    axes: [{}, {size: 50}],
    legend: {live: false},
    series: [{label: "UTC"}].concat(names.map((name) => ({
      label: name, stroke: COLOURS[name] || "#555", width: 1.5,
      points: {show: count <= 30},
    }))),
  };
  // Times in UTC, as every other time in the console.
  options.tzDate = (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC");
  holder.chart = new uPlot(options, [times].concat(names.map((n) => data.series[n])), holder);
}

function gauges() {
  for (const bar of document.querySelectorAll(".gauge .bar[data-fill]")) {
    bar.style.width = Math.max(0, Math.min(100, Number(bar.dataset.fill))) + "%";
  }
}

function suppressionImport(form) {
  const progress = form.querySelector("progress");
  const output = form.querySelector("output");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const file = form.elements.file.files[0];
    if (!file) return;
    const query = new URLSearchParams({account: form.dataset.account, name: file.name});
    const request = new XMLHttpRequest();
    request.open("POST", "/console/suppression/import?" + query);
    request.setRequestHeader("X-CSRF-Token", csrf());
    request.setRequestHeader("Content-Type", "application/octet-stream");
    progress.hidden = false;
    progress.value = 0;
    output.textContent = "uploading…";
    request.upload.onprogress = (e) => {
      if (e.lengthComputable) progress.value = Math.round(50 * e.loaded / e.total);
    };
    request.onload = () => {
      let answer = {};
      try { answer = JSON.parse(request.responseText); } catch (e) { /* not JSON */ }
      if (request.status !== 202) {
        output.textContent = answer.error || ("refused: " + request.status);
        output.className = "error";
        return;
      }
      follow(answer.job);
    };
    request.onerror = () => { output.textContent = "the upload failed"; };
    request.send(file);
  });

  async function follow(job) {
    for (;;) {
      const response = await fetch("/console/suppression/import/" + job,
                                   {credentials: "same-origin"});
      const state = await response.json();
      const part = state.rows ? state.done / state.rows : 1;
      progress.value = 50 + Math.round(50 * part);
      output.textContent = state.state === "done"
        ? `imported ${state.new} new, ${state.updated} updated, ${state.bad} bad row(s)`
          + (state.problems.length ? ": " + state.problems.slice(0, 3).join("; ") : "")
        : state.state === "failed" ? "the import failed: " + state.error
        : `importing ${state.done} of ${state.rows}…`;
      output.className = state.state === "failed" ? "error" : "";
      if (state.state !== "importing") return;
      await new Promise((resolve) => setTimeout(resolve, 300));
    }
  }
}

function eventTail(table) {
  const body = table.querySelector("tbody");
  const status = document.getElementById("tail-status");
  const form = document.getElementById("tail-filter");
  let source = null;

  function detailOf(event) {
    const skip = new Set(["eventType", "eventId", "messageId", "configurationSet", "timestamp",
                          "mail"]);
    const key = Object.keys(event).find((k) => !skip.has(k));
    const detail = key ? JSON.stringify(event[key]) : "";
    const mail = event.mail ? `${event.mail.source || "<>"} → ${event.mail.destination.join(", ")}` : "";
    return [mail, detail === "{}" ? "" : detail].filter(Boolean).join("  ");
  }

  function add(event) {
    const row = document.createElement("tr");
    row.className = "event " + event.eventType.toLowerCase().replace(/\s+/g, "-");
    const cells = [event.timestamp.replace("T", " ").replace("Z", ""), event.eventType,
                   event.configurationSet || "—", null, detailOf(event)];
    cells.forEach((text, i) => {
      const cell = document.createElement("td");
      if (i === 3) {
        const link = document.createElement("a");
        link.href = "/console/queue/" + encodeURIComponent(event.messageId);
        link.textContent = event.messageId;
        link.className = "mono";
        cell.appendChild(link);
      } else {
        cell.textContent = text;
      }
      if (i === 4) cell.className = "reply";
      row.appendChild(cell);
    });
    body.insertBefore(row, body.firstChild);
    while (body.rows.length > 500) body.deleteRow(body.rows.length - 1);
  }

  function connect() {
    if (source) source.close();
    body.textContent = "";
    const query = new URLSearchParams();
    for (const box of form.querySelectorAll('input[name="type"]:checked')) {
      query.append("type", box.value);
    }
    if (form.elements.set.value) query.append("set", form.elements.set.value);
    source = new EventSource("/console/events/stream?" + query);
    source.onopen = () => { status.textContent = "live"; status.className = "live"; };
    source.onerror = () => { status.textContent = "reconnecting…"; status.className = "hint"; };
    source.addEventListener("event", (e) => add(JSON.parse(e.data)));
    source.addEventListener("dropped", (e) => {
      status.textContent = `live (${e.data} event(s) skipped: the page fell behind)`;
    });
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); connect(); });
  connect();
}

document.addEventListener("DOMContentLoaded", () => {
  for (const holder of document.querySelectorAll(".chart[data-json]")) drawChart(holder);
  gauges();
  const form = document.getElementById("suppression-import");
  if (form) suppressionImport(form);
  const tail = document.getElementById("tail");
  if (tail) eventTail(tail);
});
