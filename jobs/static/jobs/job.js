// A job's live page: one websocket (/ws/jobs/<id>/), a log tail, and a plotly chart per
// metric updated with Plotly.extendTraces (bounded window). On reconnect it asks for what
// came after the last log and metric ids it saw.
(function () {
  "use strict";
  const jobId = JSON.parse(document.getElementById("job-id").textContent);
  const MAX_POINTS = 5000, MAX_LOG_CHARS = 400000;
  const logEl = document.getElementById("log"), conn = document.getElementById("conn");
  const charts = {};  // metric name -> div
  let lastLog = 0, lastMetric = 0, delay = 500, ws = null, snapshotSeen = false;

  function setState(job) {
    const el = document.getElementById("state");
    el.textContent = job.state.toLowerCase();
    el.className = "state " + job.state.toLowerCase();
    document.getElementById("reason").textContent = job.reason || "";
    document.getElementById("restarts").textContent = job.restarts;
    document.getElementById("preemptions").textContent = job.preemptions;
  }
  function appendLog(chunks) {
    const atBottom = logEl.scrollTop + logEl.clientHeight >= logEl.scrollHeight - 20;
    for (const c of chunks) {
      if (c.id <= lastLog) continue;
      logEl.append(c.text);
      lastLog = c.id;
    }
    if (logEl.textContent.length > MAX_LOG_CHARS) {
      logEl.textContent = logEl.textContent.slice(-MAX_LOG_CHARS / 2);
    }
    if (atBottom) logEl.scrollTop = logEl.scrollHeight;
  }
  function chartFor(name) {
    if (charts[name]) return charts[name];
    document.getElementById("no-metrics")?.remove();
    const div = document.createElement("div");
    div.className = "chart"; div.dataset.metric = name;
    document.getElementById("charts").append(div);
    Plotly.newPlot(div, [{x: [], y: [], mode: "lines", name: name, line: {width: 1.5}}], {
      title: {text: name, font: {size: 13}}, margin: {l: 50, r: 10, t: 30, b: 30},
      xaxis: {title: {text: "step"}}
    }, {displaylogo: false, responsive: true});
    charts[name] = div;
    return div;
  }
  function addSeries(series) {
    for (const [name, points] of Object.entries(series || {})) {
      if (!points.length) continue;
      Plotly.extendTraces(chartFor(name), {x: [points.map(p => p[0])], y: [points.map(p => p[1])]}, [0], MAX_POINTS);
    }
  }
  function progress(p) {
    if (!p || p.step === undefined) return;
    document.getElementById("progress").textContent =
      "step " + p.step + (p.total ? " / " + p.total : "");
  }
  function onMessage(event) {
    const msg = JSON.parse(event.data);
    if (msg.type === "snapshot" || msg.type === "resumed") {
      if (msg.type === "snapshot" && snapshotSeen) {
        // A reconnect's snapshot: only ask for what came after what we have.
        ws.send(JSON.stringify({type: "resume", log_since: lastLog, metric_since: lastMetric}));
        setState(msg.job);
        return;
      }
      snapshotSeen = true;
      setState(msg.job); appendLog(msg.logs); addSeries(msg.metrics); progress(msg.progress);
      lastMetric = Math.max(lastMetric, msg.last_metric || 0);
    } else if (msg.type === "state") {
      setState(msg);
    } else if (msg.type === "log") {
      appendLog([msg]);
    } else if (msg.type === "metrics") {
      if (msg.id && msg.id <= lastMetric) return;
      const series = {};
      for (const [k, v] of Object.entries(msg.values)) series[k] = [[msg.step, v]];
      addSeries(series); progress({step: msg.step, total: msg.total});
      if (msg.id) lastMetric = msg.id;
    }
  }
  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    ws = new WebSocket(scheme + location.host + "/ws/jobs/" + jobId + "/");
    ws.onopen = () => { conn.textContent = "live"; delay = 500; };
    ws.onmessage = onMessage;
    ws.onclose = () => {
      conn.textContent = "reconnecting…";
      setTimeout(connect, delay); delay = Math.min(delay * 2, 10000);
    };
  }
  connect();
})();
