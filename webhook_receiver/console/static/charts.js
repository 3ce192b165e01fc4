// Draws the console's charts from the JSON the page embeds (no inline script: the console's CSP forbids it).
(function () {
  "use strict";
  var source = document.getElementById("chart-data");
  if (!source || !window.Chart) { return; }
  var data = JSON.parse(source.textContent);
  var palette = ["#2f5bd3", "#1f7a4d", "#b7791f", "#c0362c", "#7b3fc4", "#0e7c86", "#8a6d3b", "#5b6478"];
  var common = {
    responsive: true,
    maintainAspectRatio: false,
    animation: false,
    plugins: { legend: { position: "bottom" } },
    scales: { y: { beginAtZero: true, title: { display: true, text: "credits" } } }
  };
  // What was drawn, on the canvas itself: for a reader of the DOM (and the browser test, which the CSP keeps
  // from evaluating script in the page).
  function mark(chart) {
    var values = chart.data.datasets.reduce(function (all, set) { return all.concat(set.data); }, []);
    chart.canvas.dataset.total = values.reduce(function (a, b) { return a + b; }, 0);
    chart.canvas.dataset.drawn = "true";
    return chart;
  }
  window.consoleCharts = {
    revenue: mark(new Chart(document.getElementById("revenue"), {
      type: "bar",
      data: { labels: data.labels, datasets: [{ label: "credits sold", data: data.revenue, backgroundColor: palette[0] }] },
      options: common
    })),
    usage: mark(new Chart(document.getElementById("usage"), {
      type: "bar",
      data: {
        labels: data.labels,
        datasets: data.usage.map(function (series, i) {
          return { label: series.label, data: series.data, backgroundColor: palette[i % palette.length] };
        })
      },
      options: Object.assign({}, common, {
        scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, title: { display: true, text: "credits" } } }
      })
    }))
  };
})();
