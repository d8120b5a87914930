// The job page's telemetry section, live over /ws/telemetry/jobs/<id>/. A GPU job
// (data-mode="gpu"): its GPUs' utilization and power over the shared range picker's range
// (ending when the job ended, or now: the history from /api/v1/jobs/<id>/telemetry/
// first, then live samples) and the energy it has used (joules and kWh, per host summed;
// kept after the job ends). A CPU job (data-mode="cpu"): its processes' CPU and resident
// memory per host, live. Charts grow with Plotly.extendTraces in a bounded window.
(function () {
  "use strict";
  const root = document.getElementById("job-telemetry");
  if (!root) return;
  const jobId = JSON.parse(document.getElementById("job-id").textContent);
  const WINDOW = 900, MAX_POINTS = 20000;
  const gpuMode = root.dataset.mode !== "cpu";
  const utilDiv = document.getElementById("job-util"), powerDiv = document.getElementById("job-second");
  let traces = {}, drawnT = {};  // "host:index" -> trace index (same in both charts), last t drawn
  const energy = {};  // host name -> joules
  let plotted = false, loading = false, generation = 0, cap = WINDOW;

  function showEnergy() {
    if (!gpuMode) return;
    const joules = Object.values(energy).reduce((a, b) => a + b, 0);
    document.getElementById("job-energy").textContent =
      joules.toFixed(1) + " J (" + (joules / 3.6e6).toFixed(6) + " kWh)";
  }
  function ensurePlots() {
    if (plotted) return;
    plotted = true;
    document.getElementById("job-tm-none")?.remove();
    if (gpuMode) {
      Plotly.newPlot(utilDiv, [], CPT.layout("GPU utilization (%)", {yaxis: {range: [0, 100]}}), CPT.config);
      Plotly.newPlot(powerDiv, [], CPT.layout("Power (W)"), CPT.config);
    } else {
      Plotly.newPlot(utilDiv, [], CPT.layout("CPU of its processes (% of one core)", {yaxis: {rangemode: "tozero"}}), CPT.config);
      Plotly.newPlot(powerDiv, [], CPT.layout("Resident memory (MiB)", {yaxis: {rangemode: "tozero"}}), CPT.config);
    }
  }
  function traceFor(key) {
    if (!(key in traces)) {
      ensurePlots();
      for (const div of [utilDiv, powerDiv]) Plotly.addTraces(div, {x: [], y: [], name: key, mode: "lines"});
      traces[key] = utilDiv.data.length - 1;
    }
    return traces[key];
  }
  function table(sample) {
    for (const g of sample.gpus) {
      const id = "job-gpu-" + sample.host.id + "-" + g.index;
      let row = document.getElementById(id);
      if (!row) {
        row = document.createElement("tr"); row.id = id;
        document.querySelector("#job-gpus tbody").append(row);
        document.getElementById("job-gpus-empty")?.remove();
      }
      const mem = g.processes.reduce((a, p) => a + (p.mem || 0), 0);
      row.innerHTML = "<td>" + sample.host.name + ":" + g.index + "</td><td>" + CPT.fmt(g.util_gpu, 0, "%") +
        "</td><td>" + CPT.bytes(mem) + " of " + CPT.bytes(g.mem_total) + "</td><td>" + CPT.fmt(g.power_w, 0, " W") +
        "</td><td>" + CPT.fmt(g.temp_gpu, 0, " °C") + "</td><td>" + g.processes.length + "</td>";
    }
  }
  function addCpu(sample) {
    const u = sample.usage || {};
    if (u.cpu == null && u.rss == null) return;
    const i = traceFor(sample.host.name), x = [[new Date(sample.t * 1000)]];
    Plotly.extendTraces(utilDiv, {x: x, y: [[u.cpu]]}, [i], WINDOW);
    Plotly.extendTraces(powerDiv, {x: x, y: [[u.rss == null ? null : u.rss / 1048576]]}, [i], WINDOW);
  }
  function add(sample) {
    if (!gpuMode) { addCpu(sample); return; }
    if (sample.usage && sample.usage.energy_j != null) { energy[sample.host.name] = sample.usage.energy_j; showEnergy(); }
    table(sample);
    if (loading) return;  // the history's points go first
    const idx = [], xs = [], util = [], power = [];
    for (const g of sample.gpus) {
      const key = sample.host.name + ":" + g.index;
      if (drawnT[key] >= sample.t) continue;
      drawnT[key] = sample.t;
      idx.push(traceFor(key));
      xs.push([new Date(sample.t * 1000)]); util.push([g.util_gpu]); power.push([g.power_w]);
    }
    if (!idx.length) return;
    Plotly.extendTraces(utilDiv, {x: xs, y: util}, idx, cap);
    Plotly.extendTraces(powerDiv, {x: xs, y: power}, idx, cap);
  }
  // The GPUs' history over `seconds` before the job's end (or now), then live samples.
  async function loadRange(seconds) {
    const mine = ++generation;
    loading = true;
    const end = root.dataset.end ? Number(root.dataset.end) : Date.now() / 1000;
    const step = Math.max(10, CP.rangeStep(seconds, 1));
    cap = Math.min(MAX_POINTS, Math.ceil(seconds / step) + WINDOW);
    const q = "?from=" + (end - seconds).toFixed(0) + "&to=" + (end + 1).toFixed(0) + "&step=" + step;
    try {
      const body = await (await fetch("/api/v1/jobs/" + jobId + "/telemetry/" + q)).json();
      if (mine !== generation) return;  // another range was picked meanwhile
      traces = {}; drawnT = {};
      if (plotted) { Plotly.react(utilDiv, [], utilDiv.layout, CPT.config); Plotly.react(powerDiv, [], powerDiv.layout, CPT.config); }
      for (const g of (body.history || {}).gpus || []) {
        if (!g.util.length) continue;
        const key = g.host + ":" + g.index, i = traceFor(key);
        const xs = g.util.map(p => new Date(p[0] * 1000));
        Plotly.extendTraces(utilDiv, {x: [xs], y: [g.util.map(p => p[1])]}, [i], cap);
        Plotly.extendTraces(powerDiv, {x: [g.power.map(p => new Date(p[0] * 1000))], y: [g.power.map(p => p[1])]}, [i], cap);
        drawnT[key] = g.util[g.util.length - 1][0];  // a bucket is drawn at its start
      }
    } finally {
      if (mine === generation) loading = false;
    }
  }
  let lastT = {};
  function onMessage(msg) {
    if (msg.type === "snapshot") {
      for (const h of msg.usage.hosts) energy[h.worker] = h.joules;
      showEnergy();
      for (const s of msg.samples) { if (!(lastT[s.host.id] >= s.t)) { lastT[s.host.id] = s.t; add(s); } }
    } else if (msg.type === "holder_sample") {
      if (lastT[msg.host.id] >= msg.t) return;
      lastT[msg.host.id] = msg.t;
      add(msg);
    }
  }
  function start() {
    if (!window.Plotly || !window.CPT || !window.CP) { setTimeout(start, 50); return; }
    if (gpuMode) {
      const opened = CP.timeRange((seconds) => loadRange(seconds));
      if (opened) loadRange(opened.seconds);
    }
    CPT.connect("/ws/telemetry/jobs/" + jobId + "/", onMessage, document.getElementById("tm-conn"));
  }
  start();
})();
