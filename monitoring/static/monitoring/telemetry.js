// Shared by the telemetry pages: a websocket that reconnects (asking only for what came
// after the last sample it saw), formatting, and the GPU tiles of the cluster/host pages.
(function () {
  "use strict";
  function fmt(v, digits, unit) {
    if (v === null || v === undefined) return "n/a";
    return Number(v).toFixed(digits) + (unit || "");
  }
  function bytes(v) {
    if (v === null || v === undefined) return "n/a";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return v.toFixed(i ? 1 : 0) + " " + units[i];
  }
  function holderText(gpu) {
    if (!gpu.ok) return "error: " + (gpu.error || "");
    const h = gpu.holder;
    if (!h) return "idle";
    if (h.hidden) return "busy · another project";
    if (h.deployment) return "deployment " + h.deployment.name + " r" + h.deployment.replica + " (job #" + h.id + ") · " + h.project;
    return h.kind + " #" + h.id + " " + h.name + " · " + h.project;
  }
  function memPct(g) {
    return g.mem_used == null || !g.mem_total ? null : 100 * g.mem_used / g.mem_total;
  }
  function setText(root, field, text) {
    const el = root.querySelector('[data-f="' + field + '"]');
    if (el && el.textContent !== text) el.textContent = text;
  }
  function tileHtml(g) {
    return '<div class="top"><span>#' + g.index + '</span><span data-f="util"></span></div>' +
      '<div class="name"></div><div class="tm-bar"><i data-f="membar"></i></div>' +
      '<div><span data-f="mem"></span> · <span data-f="temp"></span> · <span data-f="power"></span></div>' +
      '<div class="holder" data-f="holder"></div>';
  }
  // Update (or create) the tile of each GPU of a host sample inside `grid`.
  function updateTiles(grid, frame, gpuIds) {
    for (const g of frame.gpus) {
      let tile = grid.querySelector('[data-gpu="' + g.index + '"]');
      if (!tile) {
        tile = document.createElement("a");
        tile.className = "tm-tile";
        tile.dataset.gpu = g.index;
        if (gpuIds && gpuIds[g.index]) tile.href = "/telemetry/gpus/" + gpuIds[g.index] + "/";
        tile.innerHTML = tileHtml(g);
        tile.querySelector(".name").textContent = g.name;
        grid.append(tile);
      }
      tile.classList.toggle("failed", !g.ok);
      tile.style.setProperty("--u", g.util_gpu || 0);
      const pct = memPct(g);
      setText(tile, "util", g.util_gpu == null ? "n/a" : g.util_gpu + "%");
      setText(tile, "mem", pct == null ? "mem n/a" : "mem " + pct.toFixed(1) + "%");
      setText(tile, "temp", fmt(g.temp_gpu, 0, " °C"));
      setText(tile, "power", fmt(g.power_w, 0, " W"));
      setText(tile, "holder", holderText(g));
      tile.querySelector('[data-f="membar"]').style.width = (pct || 0) + "%";
    }
  }
  // One websocket: snapshot first, then samples; reconnects with ?since=<last t>.
  function connect(path, onMessage, statusEl) {
    let delay = 500, lastT = null;
    function open() {
      const scheme = location.protocol === "https:" ? "wss://" : "ws://";
      const url = scheme + location.host + path + (lastT ? "?since=" + lastT : "");
      const ws = new WebSocket(url);
      ws.onopen = () => { if (statusEl) statusEl.textContent = "live"; delay = 500; };
      ws.onmessage = (event) => {
        const msg = JSON.parse(event.data);
        if (msg.t && msg.type !== "snapshot") lastT = Math.max(lastT || 0, msg.t);
        if (msg.type === "dropped") {
          const note = document.getElementById("dropped");
          if (note) note.textContent = "this browser fell behind: " + msg.total + " sample(s) skipped";
        }
        onMessage(msg);
      };
      ws.onclose = () => {
        if (statusEl) statusEl.textContent = "reconnecting…";
        setTimeout(open, delay); delay = Math.min(delay * 2, 10000);
      };
    }
    open();
  }
  window.CPT = {fmt, bytes, holderText, memPct, updateTiles, connect, setText,
    config: {displaylogo: false, responsive: true},
    layout: (title, extra) => Object.assign({title: {text: title, font: {size: 13}},
      margin: {l: 50, r: 10, t: 30, b: 30}, xaxis: {type: "date"}, showlegend: true,
      legend: {orientation: "h", y: -0.2}}, extra || {})};
})();
