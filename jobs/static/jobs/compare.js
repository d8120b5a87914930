// The compare page: each job's metric series from the API (downsampled on the server),
// overlaid per metric name, one trace per job.
(async function () {
  "use strict";
  const ids = JSON.parse(document.getElementById("job-ids").textContent);
  const names = {};
  for (const id of ids) names[id] = "#" + id;
  const container = document.getElementById("charts");
  const charts = CP.metricCharts(container, {traceNames: names});
  charts.bindControls(document.getElementById("chart-controls"));
  const SCALAR = /^(system|params|config)\//;
  let any = false;
  await Promise.all(ids.map(async (id) => {
    const response = await fetch("/api/v1/jobs/" + id + "/metrics/?max_points=2000&with_time=1", {credentials: "same-origin"});
    if (!response.ok) return;
    const body = await response.json();
    for (const [name, points] of Object.entries(body.series)) {
      if (SCALAR.test(name) || points.length < 2) continue;
      charts.add(id, name, points);
      any = true;
    }
  }));
  if (!any) container.querySelector(".no-metrics").textContent = "None of these jobs reported a series.";
  container.dataset.loaded = "1";
})();
