// The cluster page: live GPU tiles of every host and a chart of each host's mean GPU
// utilization (CPU where it has no GPU), extended with Plotly.extendTraces in a bounded
// window. The page is server-rendered with the latest values; this keeps it live.
(function () {
  "use strict";
  const interval = JSON.parse(document.getElementById("tm-interval").textContent);
  const WINDOW = Math.max(60, Math.round(120 / interval));
  const chart = document.getElementById("cluster-chart");
  const traces = {}, lastT = {};
  window.cpTelemetry = {samples: 0, dropped: 0};
  Plotly.newPlot(chart, [], CPT.layout("Utilization per host (%): GPU mean, or CPU for a host without a GPU", {yaxis: {range: [0, 100], title: {text: "%"}}}), CPT.config);

  // Each trace says what it plots: "<host> GPU" or "<host> CPU".
  function traceFor(host, kind) {
    if (!(host.id in traces)) {
      Plotly.addTraces(chart, {x: [], y: [], name: host.name + " " + kind, mode: "lines", line: {width: 1.5}});
      traces[host.id] = chart.data.length - 1;
    }
    return traces[host.id];
  }
  function hostValue(frame) {
    const utils = frame.gpus.filter(g => g.ok && g.util_gpu != null).map(g => g.util_gpu);
    if (!utils.length) return [frame.host_metrics.cpu, "CPU"];
    return [utils.reduce((a, b) => a + b, 0) / utils.length, "GPU"];
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
      const names = {};
      for (const w of msg.workers) names[w.id] = w.name;
      for (const [id, points] of Object.entries(msg.recent)) {
        if (!points.length) continue;
        const kind = points.some(p => p.gpu_util != null) ? "GPU" : "CPU";
        const idx = traceFor({id: Number(id), name: names[id] || id}, kind);
        const ys = points.map(p => p.gpu_util != null ? p.gpu_util : p.cpu);
        Plotly.extendTraces(chart, {x: [points.map(p => new Date(p.t * 1000))], y: [ys]}, [idx], WINDOW);
      }
      for (const frame of msg.hosts) { render(frame); lastT[frame.host.id] = frame.t; }
    } else if (msg.type === "sample") {
      if (lastT[msg.host.id] >= msg.t) return;  // already in the snapshot
      lastT[msg.host.id] = msg.t;
      window.cpTelemetry.samples++;
      render(msg);
      const [value, kind] = hostValue(msg);
      Plotly.extendTraces(chart, {x: [[new Date(msg.t * 1000)]], y: [[value]]}, [traceFor(msg.host, kind)], WINDOW);
    } else if (msg.type === "dropped") {
      window.cpTelemetry.dropped = msg.total;
    }
  }
  CPT.connect("/ws/telemetry/", onMessage, document.getElementById("conn"));
})();
