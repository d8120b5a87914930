// The project page's usage chart: GPU-hours and CPU-hours per day, stacked bars.
(function () {
  "use strict";
  const daily = JSON.parse(document.getElementById("usage-daily").textContent);
  const days = daily.map((d) => d.day);
  Plotly.newPlot("usage-chart", [
    {x: days, y: daily.map((d) => d.gpu_hours), type: "bar", name: "GPU-hours"},
    {x: days, y: daily.map((d) => d.cpu_hours), type: "bar", name: "CPU-hours"},
  ], {barmode: "stack", title: {text: "Device-hours per day", font: {size: 13}},
      margin: {l: 50, r: 10, t: 30, b: 40}, yaxis: {title: {text: "hours"}}},
  {displaylogo: false, responsive: true});
})();
