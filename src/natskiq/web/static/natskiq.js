/* natskiq dashboard: live numbers and charts, confirmations, relative times.
   Plain JavaScript shipped with the package: no library, no build step.
   Everything taken from the server is written with textContent, never as HTML. */
(function () {
  "use strict";

  var body = document.body;
  var KEYS = ["processed", "failed", "busy", "enqueued", "scheduled", "retries", "dead", "nodes"];
  var HISTORY = 60; // samples kept per chart
  var WINDOW = 2; // seconds a rate is measured over, at least

  function format(n) {
    return Number(n).toLocaleString("en-US");
  }

  function relative(epoch) {
    var delta = Date.now() / 1000 - epoch;
    var size = Math.abs(delta);
    if (size < 1) return "just now";
    var units = [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]];
    for (var i = 0; i < units.length; i++) {
      if (size >= units[i][1]) {
        var amount = Math.floor(size / units[i][1]) + units[i][0];
        return delta > 0 ? amount + " ago" : "in " + amount;
      }
    }
    return "just now";
  }

  function refreshTimes() {
    var times = document.querySelectorAll("time[data-epoch]");
    for (var i = 0; i < times.length; i++) {
      times[i].textContent = relative(parseFloat(times[i].getAttribute("data-epoch")));
    }
  }

  // Buttons that ask first, and bulk buttons that need a selection.
  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("[data-confirm]") : null;
    if (!button) return;
    if (button.hasAttribute("data-needs-selection")) {
      var form = button.form;
      if (form && !form.querySelector("input[name=item]:checked")) {
        event.preventDefault();
        window.alert("Select some jobs first.");
        return;
      }
    }
    var question = button.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });

  document.addEventListener("change", function (event) {
    var box = event.target;
    if (!box.hasAttribute || !box.hasAttribute("data-select-all")) return;
    var items = box.form ? box.form.querySelectorAll("input[name=item]") : [];
    for (var i = 0; i < items.length; i++) items[i].checked = box.checked;
  });

  // -- live dashboard ---------------------------------------------------------

  var SVG = "http://www.w3.org/2000/svg";

  function svg(name, attrs) {
    var el = document.createElementNS(SVG, name);
    for (var key in attrs) el.setAttribute(key, attrs[key]);
    return el;
  }

  function draw(chart, values) {
    while (chart.firstChild) chart.removeChild(chart.firstChild);
    var width = 600, height = 150, top = 12;
    var max = Math.max(1, Math.max.apply(null, values.concat([0]))) * 1.15;
    for (var g = 1; g <= 3; g++) {
      var y = height - (height - top) * g / 3;
      chart.appendChild(svg("line", {x1: 0, x2: width, y1: y, y2: y, "class": "grid"}));
    }
    var label = svg("text", {x: 4, y: top, "class": "axis"});
    label.textContent = (max / 1.15).toFixed(max < 10 ? 1 : 0) + "/s";
    chart.appendChild(label);
    if (values.length < 2) return;
    var step = width / (HISTORY - 1);
    var start = width - step * (values.length - 1);
    var points = values.map(function (v, i) {
      return (start + i * step).toFixed(1) + "," + (height - (height - top) * v / max).toFixed(1);
    });
    chart.appendChild(svg("polygon", {
      points: start.toFixed(1) + "," + height + " " + points.join(" ") + " " + width + "," + height,
      "class": "area"
    }));
    chart.appendChild(svg("polyline", {points: points.join(" "), "class": "line"}));
  }

  function queueRows(table, queues, base) {
    var tbody = table.querySelector("tbody");
    if (!tbody) return;
    while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
    queues.forEach(function (q) {
      var row = document.createElement("tr");
      row.setAttribute("data-queue", q.name);
      var first = document.createElement("td");
      var link = document.createElement("a");
      link.href = base + "/queues/" + encodeURIComponent(q.name);
      link.textContent = q.name;
      first.appendChild(link);
      row.appendChild(first);
      [format(q.ready), format(q.running), format(q.scheduled), format(q.retries), duration(q.latency)]
        .forEach(function (text) {
          var cell = document.createElement("td");
          cell.className = "num";
          cell.textContent = text;
          row.appendChild(cell);
        });
      tbody.appendChild(row);
    });
  }

  function duration(s) {
    if (s < 10) return s.toFixed(1) + "s";
    if (s < 60) return Math.round(s) + "s";
    var m = Math.floor(s / 60);
    if (m < 60) return m + "m " + Math.floor(s % 60) + "s";
    return Math.floor(m / 60) + "h " + (m % 60) + "m";
  }

  function live() {
    var url = body.getAttribute("data-stats");
    var every = Math.max(0.2, parseFloat(body.getAttribute("data-poll")) || 3) * 1000;
    var base = url.replace(/\/api\/stats$/, "");
    var samples = [];
    var rates = {processed: [], failed: []};

    // The rate over at least WINDOW seconds: nodes add to the counters about
    // once a second, so a shorter span would swing between zero and a burst.
    function since(data) {
      for (var i = samples.length - 1; i >= 0; i--) {
        if (data.at - samples[i].at >= WINDOW) return samples[i];
      }
      return samples[0];
    }

    function update(data) {
      body.classList.remove("offline");
      KEYS.forEach(function (key) {
        var el = document.querySelector("[data-stat=" + key + "]");
        if (el && data[key] !== undefined) el.textContent = format(data[key]);
      });
      var before = samples.length ? since(data) : null;
      if (before && data.at > before.at) {
        ["processed", "failed"].forEach(function (key) {
          var rate = Math.max(0, (data[key] - before[key]) / (data.at - before.at));
          rates[key].push(rate);
          if (rates[key].length > HISTORY) rates[key].shift();
          var shown = document.querySelector("[data-rate=" + key + "]");
          if (shown) shown.textContent = rate.toFixed(rate < 10 ? 1 : 0);
        });
      }
      samples.push({at: data.at, processed: data.processed, failed: data.failed});
      while (samples.length > 2 && data.at - samples[1].at >= WINDOW) samples.shift();
      if (data.today) {
        var day = document.querySelector("tr[data-day='" + data.today.day + "']");
        ["processed", "failed"].forEach(function (key) {
          var cell = day && day.querySelector("[data-field=" + key + "]");
          if (cell) cell.textContent = format(data.today[key]);
        });
      }
      ["processed", "failed"].forEach(function (key) {
        var chart = document.querySelector("[data-chart=" + key + "]");
        if (chart) draw(chart, rates[key]);
      });
      var table = document.querySelector("table.queues");
      if (table) queueRows(table, data.queues || [], base);
      body.setAttribute("data-updated", String(data.at));
    }

    function poll() {
      fetch(url, {credentials: "same-origin", headers: {Accept: "application/json"}, cache: "no-store"})
        .then(function (response) {
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.json();
        })
        .then(update)
        .catch(function () { body.classList.add("offline"); })
        .then(function () {
          refreshTimes();
          window.setTimeout(poll, every);
        });
    }

    poll();
  }

  if (body.getAttribute("data-page") === "dashboard") live();
  window.setInterval(refreshTimes, 5000);
})();
