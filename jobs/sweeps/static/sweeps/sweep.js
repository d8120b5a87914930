// A sweep's page: hyperparameters against the metric (plotly parallel coordinates, or one
// hyperparameter against the metric), and while the sweep runs, its trials table, counts
// and best trial kept current from the API every few seconds.
(function () {
  "use strict";
  const page = JSON.parse(document.getElementById("sweep-data").textContent);
  let trials = JSON.parse(document.getElementById("sweep-trials").textContent);
  const chart = document.getElementById("sweep-chart");
  const kind = document.querySelector("#chart-kind select");

  function isNumber(v) { return typeof v === "number" && isFinite(v); }

  function axis(name, values) {
    if (values.every(isNumber)) {
      const log = page.log.includes(name) && values.every((v) => v > 0);
      return log ? {label: "log10(" + name + ")", values: values.map(Math.log10)} : {label: name, values};
    }
    const labels = [...new Set(values.map(String))];
    return {label: name, values: values.map((v) => labels.indexOf(String(v))),
            tickvals: labels.map((_, i) => i), ticktext: labels};
  }

  function draw() {
    const done = trials.filter((t) => isNumber(t.metric));
    if (!done.length) return;
    const metrics = done.map((t) => t.metric);
    const best = page.goal === "minimize" ? Math.min(...metrics) : Math.max(...metrics);
    const layout = {margin: {l: 60, r: 40, t: 40, b: 50}, height: 380};
    let data;
    if (kind.value === "parallel") {
      const dims = page.names.map((n) => axis(n, done.map((t) => t.hparams[n])));
      dims.push({label: page.metric, values: metrics});
      data = [{type: "parcoords", dimensions: dims,
               line: {color: metrics, colorscale: "Viridis", reversescale: page.goal === "minimize", showscale: true}}];
    } else {
      const name = kind.value;
      const x = done.map((t) => t.hparams[name]);
      const text = done.map((t) => "trial " + t.number + " (" + t.state.toLowerCase() + ")");
      const top = done.filter((t) => t.metric === best);
      data = [
        {type: "scatter", mode: "markers", name: "trials", x, y: metrics, text, marker: {size: 9}},
        {type: "scatter", mode: "markers", name: "best", x: top.map((t) => t.hparams[name]),
         y: top.map((t) => t.metric), marker: {size: 16, symbol: "star"}},
      ];
      layout.xaxis = {title: {text: name}, type: x.every(isNumber) && page.log.includes(name) ? "log" : "-"};
      layout.yaxis = {title: {text: page.metric}};
    }
    Plotly.react(chart, data, layout, {displaylogo: false, responsive: true});
    chart.dataset.drawn = String(done.length);
  }

  function cell(row, content, className) {
    const td = row.insertCell();
    if (className) td.className = className;
    if (content instanceof Node) td.appendChild(content); else td.textContent = content;
    return td;
  }

  function link(href, text) { const a = document.createElement("a"); a.href = href; a.textContent = text; return a; }

  function badge(state) {
    const s = document.createElement("span");
    s.className = "state " + state.toLowerCase();
    s.textContent = state.toLowerCase();
    return s;
  }

  function number(v) { return v === null || v === undefined ? "" : String(Number(v.toPrecision(6))); }

  function renderRows(bestNumber) {
    const body = document.querySelector("#trials tbody");
    body.replaceChildren();
    for (const t of trials) {
      const row = body.insertRow();
      row.dataset.trial = t.number;
      if (t.number === bestNumber) row.className = "best";
      const first = cell(row, String(t.number));
      if (t.number === bestNumber) { const b = document.createElement("b"); b.textContent = " best"; first.appendChild(b); }
      cell(row, link("/jobs/" + t.job + "/", "#" + t.job));
      cell(row, badge(t.state));
      for (const n of page.names) { const c = document.createElement("code"); c.textContent = String(t.hparams[n]); cell(row, c); }
      cell(row, number(t.metric));
      cell(row, t.metric_step === null ? "" : String(t.metric_step));
      const p = t.progress || {};
      cell(row, p.step === null || p.step === undefined ? "" : "step " + p.step + (p.total ? " / " + p.total : ""));
      cell(row, t.reason, "muted");
    }
  }

  async function refresh() {
    const base = "/api/v1/sweeps/" + page.id + "/";
    const [sweepResponse, trialsResponse] = await Promise.all([
      fetch(base, {credentials: "same-origin"}),
      fetch(base + "trials/?ordering=" + encodeURIComponent(page.sort), {credentials: "same-origin"}),
    ]);
    if (!sweepResponse.ok || !trialsResponse.ok) return true;
    const sweep = await sweepResponse.json();
    trials = await trialsResponse.json();
    const state = document.getElementById("state");
    state.className = "state " + sweep.state.toLowerCase();
    state.textContent = sweep.state.toLowerCase();
    document.getElementById("reason").textContent = sweep.reason;
    document.getElementById("counts").textContent = Object.entries(sweep.counts)
      .filter(([, n]) => n).map(([s, n]) => n + " " + s.toLowerCase()).join(" ");
    const best = document.getElementById("best");
    if (sweep.best) {
      best.replaceChildren("trial " + sweep.best.number + " (", link("/jobs/" + sweep.best.job + "/", "job #" + sweep.best.job),
        "): " + page.metric + " " + number(sweep.best.metric) + " with " +
        Object.entries(sweep.best.hparams).map(([k, v]) => k + "=" + v).join(" "));
    }
    renderRows(sweep.best ? sweep.best.number : null);
    draw();
    if (sweep.state !== "RUNNING") {
      const actions = document.getElementById("actions");
      if (actions) actions.remove();
      return false;
    }
    return true;
  }

  kind.addEventListener("change", draw);
  draw();
  if (page.running) {
    const tick = async () => {
      let again = true;
      try { again = await refresh(); } catch (error) { again = true; }
      if (again) setTimeout(tick, 3000);
      else document.body.dataset.sweepEnded = "1";
    };
    setTimeout(tick, 3000);
  }
})();
