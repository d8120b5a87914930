// The cluster page: live GPU tiles of every host and a chart of each host's mean GPU
// utilization (CPU where it has no GPU) over the shared range picker's range: the
// history API's points first (/api/v1/telemetry/history/), then the last two minutes the
// websocket snapshot carries, then live samples, averaged to one point per step of the
// range (Plotly.extendTraces with a bounded window). The page is server-rendered with the
// latest values; this keeps it live.
(function () {
  "use strict";
  const interval = JSON.parse(document.getElementById("tm-interval").textContent);
  const chart = document.getElementById("cluster-chart");
  const TITLE = "Utilization per host (%): GPU mean, or CPU for a host without a GPU";
  const RECENT = 120;  // seconds of samples kept here, as the snapshot carries
  let range = 900, step = CP.rangeStep(range, interval), generation = 0, loading = false;
  let traces = {}, drawnT = {}, pending = {};
  const recent = {}, names = {}, lastT = {};  // host id -> [[t, value, kind]], name, last sample t
  window.cpTelemetry = {samples: 0, dropped: 0};

  function cap() { return Math.ceil(range / step) + 1; }
  function reset() {
    traces = {}; drawnT = {}; pending = {};
    Plotly.react(chart, [], CPT.layout(TITLE, {yaxis: {range: [0, 100], title: {text: "%"}}}), CPT.config);
  }
  // Each trace says what it plots: "<host> GPU" or "<host> CPU".
  function traceFor(id, kind) {
    if (!(id in traces)) {
      Plotly.addTraces(chart, {x: [], y: [], name: (names[id] || id) + " " + kind, mode: "lines", line: {width: 1.5}});
      traces[id] = chart.data.length - 1;
    }
    return traces[id];
  }
  function draw(id, kind, points) {  // points: [[t seconds, value]], oldest first
    const fresh = points.filter(p => !(drawnT[id] >= p[0]));
    if (!fresh.length) return;
    drawnT[id] = fresh[fresh.length - 1][0];
    Plotly.extendTraces(chart, {x: [fresh.map(p => new Date(p[0] * 1000))], y: [fresh.map(p => p[1])]},
      [traceFor(id, kind)], cap());
  }
  function drawRecent() {
    for (const [id, points] of Object.entries(recent)) {
      if (points.length) draw(id, points[points.length - 1][2], points);
    }
  }
  async function loadRange(seconds) {
    const mine = ++generation;
    range = seconds; step = CP.rangeStep(seconds, interval);
    reset();
    loading = true;
    const to = Date.now() / 1000, historyStep = Math.max(step, 10);
    const q = "?from=" + (to - seconds).toFixed(0) + "&to=" + to.toFixed(0) + "&step=" + historyStep;
    try {
      const body = await (await fetch("/api/v1/telemetry/history/" + q)).json();
      if (mine !== generation) return;  // another range was picked meanwhile
      for (const h of body.hosts || []) {
        names[h.id] = names[h.id] || h.name;
        draw(h.id, h.kind, h.points);  // a bucket is drawn at its start: live points follow
      }
    } finally {
      if (mine === generation) { loading = false; if (step <= interval) drawRecent(); }
    }
  }
  function hostValue(frame) {
    const utils = frame.gpus.filter(g => g.ok && g.util_gpu != null).map(g => g.util_gpu);
    if (!utils.length) return [frame.host_metrics.cpu, "CPU"];
    return [utils.reduce((a, b) => a + b, 0) / utils.length, "GPU"];
  }
  function remember(id, t, value, kind) {
    const points = recent[id] = recent[id] || [];
    points.push([t, value, kind]);
    while (points.length && points[0][0] < t - RECENT) points.shift();
  }
  // A live sample: averaged into one point per step (each sample when step is the interval).
  function addLive(id, t, value, kind) {
    remember(id, t, value, kind);
    if (loading) return;  // the history's points go first
    const p = pending[id] = pending[id] || {t0: t, n: 0, sum: 0};
    if (value != null) { p.n++; p.sum += value; }
    if (t - p.t0 >= step - 1e-6 || step <= interval) {
      draw(id, kind, [[t, p.n ? p.sum / p.n : null]]);
      delete pending[id];
    }
  }
  function section(frame) {
    let el = document.querySelector('.tm-host[data-host="' + frame.host.id + '"]');
    if (!el) {
      document.getElementById("no-hosts")?.remove();
      el = document.createElement("section");
      el.className = "tm-host"; el.dataset.host = frame.host.id;
      el.innerHTML = '<h2><a></a> <span class="muted">CPU <b data-f="cpu"></b>% · memory <b data-f="mem"></b>% · load <b data-f="load"></b></span></h2>' +
        '<p class="muted" data-f="nvml"></p><div class="tm-grid"></div>';
      const link = el.querySelector("a");
      link.href = "/telemetry/hosts/" + frame.host.id + "/"; link.textContent = frame.host.name;
      document.getElementById("hosts").append(el);
    }
    return el;
  }
  function render(frame) {
    const el = section(frame), m = frame.host_metrics;
    CPT.setText(el, "cpu", CPT.fmt(m.cpu, 1));
    CPT.setText(el, "mem", CPT.fmt(100 * m.mem_used / m.mem_total, 1));
    CPT.setText(el, "load", CPT.fmt(m.load[0], 2));
    const nvml = el.querySelector('[data-f="nvml"]');
    nvml.hidden = frame.gpus.length > 0;
    nvml.textContent = frame.nvml === "ok" ? "no NVIDIA GPU" : frame.nvml;
    CPT.updateTiles(el.querySelector(".tm-grid"), frame, null);
  }
  function onMessage(msg) {
    if (msg.type === "snapshot") {
      for (const w of msg.workers) names[w.id] = w.name;
      for (const [id, points] of Object.entries(msg.recent)) {
        for (const p of points) {
          const gpu = p.gpu_util != null;
          if (!(lastT[id] >= p.t)) remember(id, p.t, gpu ? p.gpu_util : p.cpu, gpu ? "GPU" : "CPU");
        }
      }
      for (const frame of msg.hosts) { render(frame); lastT[frame.host.id] = Math.max(lastT[frame.host.id] || 0, frame.t); }
      if (!loading && step <= interval) drawRecent();
    } else if (msg.type === "sample") {
      if (lastT[msg.host.id] >= msg.t) return;  // already in the snapshot
      lastT[msg.host.id] = msg.t;
      names[msg.host.id] = msg.host.name;
      window.cpTelemetry.samples++;
      render(msg);
      const [value, kind] = hostValue(msg);
      addLive(msg.host.id, msg.t, value, kind);
    } else if (msg.type === "dropped") {
      window.cpTelemetry.dropped = msg.total;
    }
  }
  const opened = CP.timeRange((seconds) => loadRange(seconds));
  loadRange(opened ? opened.seconds : 900);
  CPT.connect("/ws/telemetry/", onMessage, document.getElementById("conn"));
})();
