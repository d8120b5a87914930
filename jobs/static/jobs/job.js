// A job's live page over one websocket (/ws/jobs/<id>/): state, the log, metrics and
// progress. Every metric's latest value goes to the Values table; a metric reported at
// two or more steps (and not a run's description, system/*) also gets a chart. When the
// state changes the Attempts table is fetched again. On reconnect the page asks only for
// what came after the last log and metric ids it saw.
(function () {
  "use strict";
  const jobId = JSON.parse(document.getElementById("job-id").textContent);
  const MAX_LOG_CHARS = 400000;
  const SCALAR = /^(system|params|config)\//;
  const logEl = document.getElementById("log"), search = document.getElementById("log-search");
  const follow = document.getElementById("log-follow");
  const charts = CP.metricCharts(document.getElementById("charts"));
  charts.bindControls(document.getElementById("chart-controls"));
  const firstPoint = {};  // metric -> its only point so far
  let logText = "", lastLog = 0, lastMetric = 0, snapshotSeen = false, lastState = null;

  function setState(job) {
    const el = document.getElementById("state");
    el.textContent = job.state.toLowerCase();
    el.className = "state " + job.state.toLowerCase();
    document.getElementById("reason").textContent = job.reason || "";
    document.getElementById("restarts").textContent = job.restarts;
    document.getElementById("preemptions").textContent = job.preemptions;
    if (job.progress) progress(job.progress);
    if (["SUCCEEDED", "FAILED", "CANCELLED"].includes(job.state)) document.getElementById("cancel-form")?.remove();
    if (lastState !== null && lastState !== job.state) refreshAttempts();
    lastState = job.state;
  }
  async function refreshAttempts() {
    const response = await fetch("/jobs/" + jobId + "/attempts/", {credentials: "same-origin"});
    if (response.ok) document.querySelector("#attempts tbody").innerHTML = await response.text();
  }
  // As a terminal shows it: a line ending in \r (a progress bar's redraw) is overwritten
  // by whatever follows it; the last one stands until then.
  function terminal(text) { return text.replace(/[^\r\n]*\r(?!\n|$)/g, "").replace(/\r$/, ""); }
  function renderLog() {
    const q = search.value.trim().toLowerCase();
    const counter = document.getElementById("log-matches");
    const shown = terminal(logText);
    if (!q) { logEl.textContent = shown; counter.textContent = ""; }
    else {
      const lines = shown.split("\n").filter((l) => l.toLowerCase().includes(q));
      logEl.textContent = "";
      for (const line of lines) {
        const at = line.toLowerCase().indexOf(q), mark = document.createElement("mark");
        mark.textContent = line.slice(at, at + q.length);
        logEl.append(line.slice(0, at), mark, line.slice(at + q.length) + "\n");
      }
      counter.textContent = lines.length + " matching line" + (lines.length === 1 ? "" : "s");
    }
    if (follow.checked) logEl.scrollTop = logEl.scrollHeight;
  }
  function appendLog(chunks) {
    let changed = false;
    for (const c of chunks) {
      if (c.id <= lastLog) continue;
      logText += c.text; lastLog = c.id; changed = true;
    }
    if (logText.length > MAX_LOG_CHARS) logText = logText.slice(-MAX_LOG_CHARS / 2);
    if (changed) renderLog();
  }
  function setScalar(name, value) {
    const body = document.querySelector("#scalars tbody");
    let row = [...body.querySelectorAll("tr[data-metric]")].find((r) => r.dataset.metric === name);
    if (!row) {
      body.querySelector("tr.empty")?.remove();
      row = document.createElement("tr"); row.dataset.metric = name;
      const a = document.createElement("td"), b = document.createElement("td");
      a.textContent = name; b.className = "v"; row.append(a, b);
      const after = [...body.children].find((r) => r.dataset.metric > name);
      body.insertBefore(row, after || null);
    }
    row.querySelector(".v").textContent = Number.isInteger(value) ? value : Number(value.toPrecision(6));
  }
  function addPoints(name, points) {
    if (!points.length) return;
    setScalar(name, points[points.length - 1][1]);
    if (SCALAR.test(name)) return;
    if (!charts.has(name)) {
      const all = (firstPoint[name] ? [firstPoint[name]] : []).concat(points);
      if (all.length < 2) { firstPoint[name] = all[0]; return; }
      delete firstPoint[name];
      charts.add("job", name, all);
    } else charts.add("job", name, points);
  }
  function progress(p) {
    if (!p || p.step === undefined || p.step === null) return;
    CP.setProgress(document.querySelector("#progress .progress"), p.step, p.total);
  }
  function onMessage(msg, ws) {
    if (msg.type === "snapshot" || msg.type === "resumed") {
      if (msg.type === "snapshot" && snapshotSeen) {
        ws.send(JSON.stringify({type: "resume", log_since: lastLog, metric_since: lastMetric}));
        setState(msg.job);
        return;
      }
      snapshotSeen = true;
      setState(msg.job); appendLog(msg.logs); progress(msg.progress);
      for (const [name, points] of Object.entries(msg.metrics || {})) addPoints(name, points);
      lastMetric = Math.max(lastMetric, msg.last_metric || 0);
    } else if (msg.type === "state") {
      setState(msg);
    } else if (msg.type === "log") {
      appendLog([msg]);
    } else if (msg.type === "progress") {
      progress(msg);
    } else if (msg.type === "metrics") {
      if (msg.id && msg.id <= lastMetric) return;
      const t = msg.time ? Date.parse(msg.time) / 1000 : Date.now() / 1000;
      for (const [k, v] of Object.entries(msg.values)) addPoints(k, [[msg.step, v, t]]);
      progress({step: msg.step, total: msg.total});
      if (msg.id) lastMetric = msg.id;
    }
  }
  search.addEventListener("input", renderLog);
  follow.addEventListener("change", renderLog);
  CP.live("/ws/jobs/" + jobId + "/", onMessage, document.getElementById("conn"));
})();
