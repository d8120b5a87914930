// A host's page (or one GPU's): live charts of utilization, memory, power, temperature
// and clocks per GPU and of the host, over the shared range picker's ranges. The 15 min range
// starts from the recent window the websocket snapshot carries; longer ranges from the
// history API. Live samples are appended with Plotly.extendTraces, at most one point per
// step of the range, so every trace stays bounded.
(function () {
  "use strict";
  const page = JSON.parse(document.getElementById("tm-page").textContent);
  const single = page.gpu_index;
  // chart id -> [title, recent-window column, history field, scale, axis]
  const GPU_CHARTS = {
    "chart-util": ["GPU utilization (%)", 0, "util_mean", 1],
    "chart-mem": ["GPU memory used (GiB)", 1, "mem_used_mean", 1 / 2 ** 30],
    "chart-power": ["Power (W)", 2, "power_mean", 1],
    "chart-temp": ["Temperature (°C)", 3, "temp_mean", 1],
    "chart-clocks": ["SM clock (MHz)", 4, "sm_clock_mean", 1],
  };
  const LIVE_FIELD = {0: "util_gpu", 1: "mem_used", 2: "power_w", 3: "temp_gpu", 4: "sm_clock", 5: "mem_clock"};
  let range = 900, step = Math.max(page.interval, 1), gpus = [], memTotal = null, pending = {};
  const charts = {};

  function window_() { return Math.ceil(range / step) + 1; }
  function gpuList(frame) {
    return frame.gpus.filter(g => single === null || g.index === single).map(g => g.index);
  }
  function setup(indices) {
    gpus = indices; pending = {};
    for (const [id, [title]] of Object.entries(GPU_CHARTS)) {
      const div = document.getElementById(id);
      if (!div) continue;
      const traces = gpus.map(i => ({x: [], y: [], mode: "lines", name: "GPU " + i, line: {width: 1.5}}));
      if (id === "chart-clocks" && single !== null) traces.push({x: [], y: [], mode: "lines", name: "memory clock"});
      Plotly.react(div, traces, CPT.layout(title), CPT.config);
      charts[id] = div;
    }
    const host = document.getElementById("chart-host");
    if (host) {
      Plotly.react(host, [{x: [], y: [], name: "CPU %", mode: "lines"}, {x: [], y: [], name: "memory %", mode: "lines"}],
        CPT.layout("Host CPU and memory (%)", {yaxis: {range: [0, 100]}}), CPT.config);
      charts["chart-host"] = host;
    }
  }
  // Append one point per trace: values[chartId] = [y per trace]; t in seconds.
  function append(t, values) {
    for (const [id, ys] of Object.entries(values)) {
      const div = charts[id];
      if (!div || !ys.length) continue;
      Plotly.extendTraces(div, {x: ys.map(() => [new Date(t * 1000)]), y: ys.map(y => [y])},
        ys.map((_, i) => i), window_());
    }
  }
  function valuesFromRecent(entry) {
    const out = {};
    for (const [id, [, col, , scale]] of Object.entries(GPU_CHARTS)) {
      out[id] = gpus.map(i => { const g = entry.gpus[i]; return g && g[col] != null ? g[col] * scale : null; });
      if (id === "chart-clocks" && single !== null) out[id].push(entry.gpus[single] ? entry.gpus[single][5] : null);
    }
    out["chart-host"] = [entry.cpu, memTotal && entry.mem_used != null ? 100 * entry.mem_used / memTotal : null];
    return out;
  }
  function valuesFromFrame(frame) {
    const byIndex = {};
    for (const g of frame.gpus) byIndex[g.index] = g;
    const entry = {t: frame.t, cpu: frame.host_metrics.cpu, mem_used: frame.host_metrics.mem_used,
      gpus: []};
    for (const g of frame.gpus) entry.gpus[g.index] = [0, 1, 2, 3, 4, 5].map(k => g[LIVE_FIELD[k]]);
    return valuesFromRecent(entry);
  }
  // Live samples are averaged into one point per `step` seconds.
  function addLive(frame) {
    const values = valuesFromFrame(frame);
    if (!pending.t0) pending = {t0: frame.t, n: 0, sums: {}};
    pending.n++;
    for (const [id, ys] of Object.entries(values)) {
      pending.sums[id] = (pending.sums[id] || ys.map(() => null)).map((s, i) => ys[i] == null ? s : (s || 0) + ys[i]);
    }
    if (loading) return;  // the history's points come first: live ones go after them
    if (frame.t - pending.t0 >= step - 1e-6 || step <= page.interval) {
      const out = {};
      for (const [id, sums] of Object.entries(pending.sums)) out[id] = sums.map(s => s == null ? null : s / pending.n);
      append(frame.t, out);
      pending = {};
    }
  }
  let loading = false, generation = 0;
  async function loadHistory(seconds) {
    const mine = ++generation;
    range = seconds;
    const to = Date.now() / 1000, from = to - seconds;
    step = CP.rangeStep(seconds, page.interval);
    setup(gpus);
    loading = seconds > 900;
    if (!loading) { replayRecent(); return; }
    try { await drawHistory(from, to, () => mine === generation); } finally { if (mine === generation) loading = false; }
  }
  async function drawHistory(from, to, current) {
    const q = "?from=" + from.toFixed(0) + "&to=" + to.toFixed(0) + "&step=" + step;
    const host = await (await fetch("/api/v1/workers/" + page.worker_id + "/telemetry/" + q)).json();
    const perGpu = await Promise.all(gpus.map(i => page.gpu_ids[i]
      ? fetch("/api/v1/gpus/" + page.gpu_ids[i] + "/telemetry/" + q).then(r => r.json()) : {points: []}));
    if (!current()) return;  // another range was picked meanwhile
    for (const [id, [, , field, scale]] of Object.entries(GPU_CHARTS)) {
      if (!charts[id]) continue;
      const update = {x: [], y: []};
      perGpu.forEach(h => { update.x.push(h.points.map(p => new Date(p.t * 1000)));
        update.y.push(h.points.map(p => p[field] == null ? null : p[field] * scale)); });
      if (id === "chart-clocks" && single !== null) {
        update.x.push(perGpu[0].points.map(p => new Date(p.t * 1000)));
        update.y.push(perGpu[0].points.map(p => p.mem_clock_mean));
      }
      Plotly.extendTraces(charts[id], update, update.x.map((_, i) => i), window_());
    }
    if (charts["chart-host"] && host.points) {
      const xs = host.points.map(p => new Date(p.t * 1000));
      Plotly.extendTraces(charts["chart-host"], {x: [xs, xs], y: [host.points.map(p => p.cpu_mean),
        host.points.map(p => memTotal && p.mem_used_mean != null ? 100 * p.mem_used_mean / memTotal : null)]}, [0, 1], window_());
    }
  }
  let recent = [];
  function replayRecent() { for (const entry of recent) append(entry.t, valuesFromRecent(entry)); }
  function processes(frame) {
    const rows = [];
    for (const g of frame.gpus) {
      if (single !== null && g.index !== single) continue;
      const all = g.processes.map(p => [g.index, p]).concat(
        (g.mig || []).flatMap(m => m.processes.map(p => [g.index + " MIG " + m.index, p])));
      for (const [where, p] of all) {
        const owner = p.holder ? p.holder[0] + " #" + p.holder[1] : "";
        rows.push("<tr><td>" + where + "</td><td>" + p.pid + "</td><td>" + CPT.bytes(p.mem) +
          "</td><td>" + CPT.fmt(p.sm, 0) + "</td><td>" + owner + "</td></tr>");
      }
    }
    document.querySelector("#processes tbody").innerHTML =
      rows.join("") || '<tr><td colspan="5" class="muted">no compute process</td></tr>';
  }
  function facts(frame) {
    const m = frame.host_metrics, a = frame.agent || {};
    memTotal = m.mem_total;
    document.getElementById("f-cpu").textContent = CPT.fmt(m.cpu, 1);
    document.getElementById("f-mem").textContent = CPT.fmt(100 * m.mem_used / m.mem_total, 1);
    document.getElementById("f-load").textContent = m.load.join(" ");
    document.getElementById("f-nvml").textContent = frame.nvml;
    if (a.cpu_percent != null) document.getElementById("f-agent").textContent =
      a.cpu_percent + "% of a core, " + a.sample_ms + " ms a sample";
    const tiles = document.getElementById("tiles");
    if (tiles) CPT.updateTiles(tiles, frame, page.gpu_ids);
    if (single !== null) {
      const g = frame.gpus.find(x => x.index === single);
      if (g) for (const td of document.querySelectorAll("#fields td[data-field]")) {
        const v = g[td.dataset.field];
        td.textContent = v === null || v === undefined ? "n/a" : (Array.isArray(v) ? v.join(", ") : String(v));
      }
    }
    processes(frame);
  }
  let lastT = 0;
  function onMessage(msg) {
    if (msg.type === "snapshot") {
      const frame = msg.hosts[0];
      if (frame) facts(frame);
      const entries = (msg.recent[page.worker_id] || []).filter(e => e.t > lastT);
      recent = recent.concat(entries).slice(-900);
      if (!lastT) {
        setup(frame ? gpuList(frame) : []);
        if (range <= 900) replayRecent(); else loadHistory(range);
      } else if (range <= 900) {
        for (const e of entries) append(e.t, valuesFromRecent(e));
      }
      if (frame) lastT = Math.max(lastT, frame.t);
    } else if (msg.type === "sample") {
      if (msg.t <= lastT) return;
      lastT = msg.t;
      if (gpus.length !== gpuList(msg).length) setup(gpuList(msg));
      facts(msg);
      addLive(msg);
      if (!(msg.seq % Math.max(1, Math.round(1 / page.interval)))) {
        recent.push({t: msg.t, cpu: msg.host_metrics.cpu, mem_used: msg.host_metrics.mem_used,
          gpus: valuesFromFrameCompact(msg)});
        if (recent.length > 900) recent.shift();
      }
    }
  }
  function valuesFromFrameCompact(frame) {
    const out = [];
    for (const g of frame.gpus) out[g.index] = [0, 1, 2, 3, 4, 5].map(k => g[LIVE_FIELD[k]]);
    return out;
  }
  const opened = CP.timeRange((seconds) => loadHistory(seconds));
  if (opened) { range = opened.seconds; step = CP.rangeStep(range, page.interval); }
  CPT.connect("/ws/telemetry/hosts/" + page.worker_id + "/", onMessage, document.getElementById("conn"));
})();
