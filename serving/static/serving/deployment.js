// A deployment's live page: the controller's frames over /ws/deployments/<id>/ update
// the figures and charts; a change of state or replicas refreshes the replicas and events
// tables from the REST API; the playground streams a completion from the gateway (/v1/)
// with the browser's session and CSRF token.
(function () {
  "use strict";
  const id = JSON.parse(document.getElementById("deployment-id").textContent);
  const name = JSON.parse(document.getElementById("deployment-name").textContent);
  const history = JSON.parse(document.getElementById("deployment-samples").textContent);
  const MAX_POINTS = 3600;
  const conn = document.getElementById("conn");
  let delay = 500, lastShape = "";

  const layout = (title, y) => ({
    title: {text: title, font: {size: 13}}, margin: {l: 50, r: 10, t: 30, b: 30},
    yaxis: {title: {text: y}, rangemode: "tozero"}, legend: {orientation: "h"},
  });
  const line = (label) => ({x: [], y: [], mode: "lines", name: label, line: {width: 1.5}});
  const charts = {
    rate: ["chart-rate", "Throughput", "per second", [["requests_per_s", "requests/s"], ["tokens_per_s", "tokens/s"]]],
    latency: ["chart-latency", "Latency", "ms", [["latency_p50", "p50"], ["latency_p99", "p99"], ["ttft_p50", "TTFT p50"]]],
    replicas: ["chart-replicas", "Replicas and load", "count", [["ready", "ready"], ["in_flight", "in flight"], ["queue", "queued"]]],
  };
  const ms = (k) => k.startsWith("latency") || k.startsWith("ttft") || k.startsWith("itl");
  for (const [div, title, y, series] of Object.values(charts)) {
    Plotly.newPlot(div, series.map(([, label]) => line(label)), layout(title, y),
      {displaylogo: false, responsive: true});
  }
  function value(frame, key) {
    const v = key === "ready" && frame.ready === undefined ? frame.replicas_ready : frame[key];
    if (v === null || v === undefined) return null;
    return ms(key) ? v * 1000 : v;
  }
  function extend(points) {  // points: [{time (Date), values}]
    if (!points.length) return;
    for (const [div, , , series] of Object.values(charts)) {
      Plotly.extendTraces(div, {
        x: series.map(() => points.map(p => p.time)),
        y: series.map(([key]) => points.map(p => value(p.values, key))),
      }, series.map((_, i) => i), MAX_POINTS);
    }
  }
  extend(history.map(s => ({time: new Date(s.time), values: {...s.values, ready: s.replicas}})));

  function show(frame) {
    document.getElementById("state").textContent = frame.state.toLowerCase();
    document.getElementById("state").className = "state " + frame.state.toLowerCase();
    document.getElementById("reason").textContent = frame.reason || "";
    for (const key of ["requests_per_s", "tokens_per_s", "latency_p50", "latency_p99", "ttft_p50",
                       "batch_size", "queue", "in_flight", "ready"]) {
      const el = document.getElementById("f-" + key);
      const v = value(frame, key);
      if (el) el.textContent = v === null ? "–" : (Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(1));
    }
    if (frame.energy) showEnergy(frame.energy);
    if (frame.devices) showDevices(frame.devices);
    extend([{time: new Date(frame.time * 1000), values: frame}]);
    const shape = frame.state + JSON.stringify(frame.replicas || {}) + frame.wanted;
    if (shape !== lastShape) { lastShape = shape; refreshTables(); }
  }

  function showEnergy(e) {
    const gpu = e.joules_per_1k_tokens !== null && e.joules_per_1k_tokens !== undefined;
    const v = gpu ? e.joules_per_1k_tokens : e.cpu_seconds_per_1k_tokens;
    document.getElementById("f-energy").textContent = v === null || v === undefined ? "–" : v.toFixed(gpu ? 1 : 2);
    document.getElementById("f-energy-unit").textContent = gpu ? "J per 1k tokens" : "CPU-s per 1k tokens";
    document.getElementById("energy-basis").textContent = "Energy per 1k generated tokens, from " + e.basis_text + ".";
  }
  const pct = (v) => v === null || v === undefined ? "–" : v.toFixed(0) + " %";
  function showDevices(devices) {
    const rows = [];
    for (const d of devices) {
      const host = d.host && d.host.name ? d.host.name : String(d.host);
      if (d.gpus.length) {
        for (const g of d.gpus) {
          rows.push([`r${d.replica}`, host, `GPU ${g.index} ${g.name || ""}`, pct(g.util_gpu),
            g.mem_total ? CPT.bytes(g.mem_used) + " / " + CPT.bytes(g.mem_total) : CPT.bytes(g.mem_used),
            g.power_w === null || g.power_w === undefined ? "–" : g.power_w.toFixed(0) + " W"]);
        }
      } else {
        rows.push([`r${d.replica}`, host, "CPU", d.cpu === null || d.cpu === undefined ? "–" : d.cpu.toFixed(0) + " % CPU",
          CPT.bytes(d.rss), "–"]);
      }
    }
    const body = document.querySelector("#devices tbody");
    if (!rows.length) {
      body.replaceChildren(); const tr = document.createElement("tr");
      const td = cell("No replica is running on a host that reports telemetry.", "muted"); td.colSpan = 6;
      tr.append(td); body.append(tr); return;
    }
    body.replaceChildren(...rows.map(values => {
      const tr = document.createElement("tr"); tr.append(...values.map(v => cell(v))); return tr;
    }));
  }

  function cell(text, cls) {
    const td = document.createElement("td");
    if (cls) { const s = document.createElement("span"); s.className = cls; s.textContent = text; td.append(s); }
    else td.textContent = text;
    return td;
  }
  async function refreshTables() {
    try {
      const dep = await (await fetch(`/api/v1/deployments/${id}/`)).json();
      const body = document.querySelector("#replicas tbody");
      body.replaceChildren(...dep.replica_set.map(r => {
        const tr = document.createElement("tr");
        const job = document.createElement("td");
        const a = document.createElement("a"); a.href = `/jobs/${r.job}/`; a.textContent = "#" + r.job; job.append(a);
        tr.append(cell("r" + r.number), cell(r.state.toLowerCase(), "state " + r.state.toLowerCase()),
          cell(r.revision), cell(r.worker_name), cell(r.endpoint), job, cell(r.attempt),
          cell(r.cold_start_seconds ? r.cold_start_seconds.toFixed(1) + " s" : ""));
        return tr;
      }));
      document.getElementById("replica-count").textContent = dep.replicas +
        (dep.min_replicas !== dep.max_replicas ? ` (autoscaled ${dep.min_replicas}–${dep.max_replicas})` : "");
      const events = await (await fetch(`/api/v1/deployments/${id}/events/?page_size=50`)).json();
      document.querySelector("#events tbody").replaceChildren(...events.results.map(e => {
        const tr = document.createElement("tr");
        tr.append(cell(e.created_at.slice(0, 19).replace("T", " ")), cell(e.message));
        tr.children[0].className = "muted"; tr.children[1].className = e.level;
        return tr;
      }));
    } catch (err) { /* the next frame tries again */ }
  }

  function connect() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${proto}://${location.host}/ws/deployments/${id}/`);
    ws.onopen = () => { conn.textContent = "live"; delay = 500; };
    ws.onmessage = (event) => {
      const msg = JSON.parse(event.data);
      if (msg.type === "stats") show(msg);
    };
    ws.onclose = () => {
      conn.textContent = "reconnecting…";
      setTimeout(connect, delay); delay = Math.min(delay * 2, 10000);
    };
  }
  connect();

  // --- playground: a streamed completion through the gateway -------------------------
  const csrf = () => (document.cookie.match(/(?:^|; )csrftoken=([^;]*)/) || [])[1] || "";
  document.getElementById("playground").addEventListener("submit", async (event) => {
    event.preventDefault();
    const out = document.getElementById("pg-out"), info = document.getElementById("pg-info");
    const button = document.getElementById("pg-go");
    out.textContent = ""; info.textContent = ""; button.disabled = true;
    const started = performance.now();
    let first = null, chunks = 0;
    try {
      const response = await fetch("/v1/completions", {
        method: "POST",
        headers: {"Content-Type": "application/json", "X-CSRFToken": decodeURIComponent(csrf())},
        body: JSON.stringify({
          model: name, prompt: document.getElementById("pg-prompt").value, stream: true,
          max_tokens: Number(document.getElementById("pg-max").value) || 32,
          temperature: Number(document.getElementById("pg-temp").value) || 0,
        }),
      });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        throw new Error(`${response.status}: ${body.error?.message || response.statusText}`);
      }
      const reader = response.body.getReader(), decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, {stream: true});
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
          const data = event.replace(/^data: /, "");
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          const text = chunk.choices?.[0]?.text || "";
          if (text && first === null) first = performance.now() - started;
          out.textContent += text; chunks += 1;
        }
      }
      info.textContent = `served by ${response.headers.get("x-cp-replica")} (revision ` +
        `${response.headers.get("x-cp-revision")}); first token ${first?.toFixed(0)} ms, ` +
        `${chunks} chunks in ${(performance.now() - started).toFixed(0)} ms`;
      out.dataset.done = "1";
    } catch (err) {
      info.textContent = "Failed: " + err.message; info.className = "error";
    } finally { button.disabled = false; }
  });
})();
