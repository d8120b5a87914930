// Metric charts shared by the job and compare pages: one chart per metric name, one trace
// per run, redrawn from the raw points with the page's controls (smoothing, log scale,
// x by step or wall time). Points are [step, value, unix_time]; the server downsamples.
// Only charts on or near the screen are drawn (as dashboards of many panels do): a page
// of 20 series is usable once the first screenful is drawn, the rest as it scrolls in.
// A new chart is drawn at the next frame; updates of drawn ones are batched (200 ms).
//   const set = CP.metricCharts(container, {traceNames: {...}});
//   set.add(runId, "loss", points); set.bindControls(formElement);
window.CP = window.CP || {};
CP.metricCharts = function (container, options) {
  "use strict";
  const MAX_POINTS = (options && options.maxPoints) || 5000;
  const names = (options && options.traceNames) || {};
  const charts = {};  // metric -> {div, runs: {run: points}}
  const view = {smoothing: 0, log: false, x: "step"};
  let dirty = new Set(), timer = null;
  const near = new Set();  // metrics whose chart is on or near the screen
  const seen = typeof IntersectionObserver === "function" ? new IntersectionObserver((entries) => {
    for (const e of entries) {
      const metric = e.target.dataset.metric;
      if (e.isIntersecting) { near.add(metric); if (dirty.has(metric)) schedule(0); } else near.delete(metric);
    }
  }, {rootMargin: "300px 0px"}) : null;

  function smooth(ys, weight) {
    if (!weight) return ys;
    let last = null;  // exponential moving average, debiased as TensorBoard does
    let num = 0, den = 0;
    return ys.map((y) => { num = num * weight + (1 - weight) * y; den = den * weight + (1 - weight); last = num / den; return last; });
  }
  function traces(metric) {
    const out = [];
    for (const [run, points] of Object.entries(charts[metric].runs)) {
      const xs = points.map((p) => view.x === "time" ? new Date(p[2] * 1000) : p[0]);
      const ys = points.map((p) => p[1]);
      const label = names[run] || run;
      if (view.smoothing) out.push({x: xs, y: ys, mode: "lines", name: label + " (raw)", opacity: 0.25, showlegend: false, hoverinfo: "skip", line: {width: 1}});
      out.push({x: xs, y: smooth(ys, view.smoothing), mode: "lines", name: label, line: {width: 1.6}});
    }
    return out;
  }
  function layout(metric) {
    return {title: {text: metric, font: {size: 13}}, margin: {l: 55, r: 10, t: 30, b: 35},
      xaxis: {title: {text: view.x === "time" ? "wall time" : "step"}, type: view.x === "time" ? "date" : "linear"},
      yaxis: {type: view.log ? "log" : "linear"}, hovermode: "x unified",
      showlegend: Object.keys(charts[metric].runs).length > 1, legend: {orientation: "h", y: -0.25}};
  }
  function draw(metric) { Plotly.react(charts[metric].div, traces(metric), layout(metric), {displaylogo: false, responsive: true}); }
  function flush() {
    timer = null;
    for (const m of dirty) if (!seen || near.has(m)) { draw(m); dirty.delete(m); }
  }
  function schedule(delay) {
    if (timer !== null && delay > 0) return;
    if (timer !== null) clearTimeout(timer);
    timer = delay ? setTimeout(flush, delay) : setTimeout(() => requestAnimationFrame(flush), 0);
  }
  function chart(metric) {
    if (!charts[metric]) {
      container.querySelector(".no-metrics")?.remove();
      const div = document.createElement("div");
      div.className = "chart"; div.dataset.metric = metric;
      const sorted = Object.keys(charts).concat([metric]).sort();
      const before = charts[sorted[sorted.indexOf(metric) + 1]];
      container.insertBefore(div, before ? before.div : null);
      charts[metric] = {div: div, runs: {}};
      if (seen) seen.observe(div);
    }
    return charts[metric];
  }
  return {
    has: (metric) => metric in charts,
    add(run, metric, points) {
      if (!points.length) return;
      const c = chart(metric);
      const have = (c.runs[run] = c.runs[run] || []);
      for (const p of points) have.push(p);
      if (have.length > MAX_POINTS) have.splice(0, have.length - MAX_POINTS);
      dirty.add(metric);
      schedule(c.div.classList.contains("js-plotly-plot") ? 200 : 0);  // drawn: batch updates
    },
    bindControls(form) {
      if (!form) return;
      const read = () => {
        view.smoothing = Number(form.querySelector("[name=smoothing]").value);
        view.log = form.querySelector("[name=log]").checked;
        view.x = form.querySelector("[name=x]").value;
        const out = form.querySelector("output");
        if (out) out.textContent = view.smoothing.toFixed(2);
        for (const m of Object.keys(charts)) dirty.add(m);
        schedule(0);
      };
      form.addEventListener("input", read);
      form.addEventListener("change", read);
    },
  };
};
