/* A channel's stored records: the same QUERY as the API (filters, sort, paging, groupBy), an
 * export of the current filters, and everything shown as text. */
(function () {
  "use strict";

  var page = window.ADMIN;
  var OPERATORS = ["=", "!=", ">", ">=", "<", "<=", "in", "nin", "contains", "exists"];
  var offset = 0;
  var $ = function (id) { return document.getElementById(id); };

  function parseValue(text) {
    try { return JSON.parse(text); } catch (ignored) { return text; }
  }

  function addFilter(field, operator, value) {
    var row = document.createElement("div");
    row.className = "filter";
    var fieldInput = document.createElement("input");
    fieldInput.placeholder = "username or data.path";
    fieldInput.value = field || "";
    fieldInput.className = "field";
    var select = document.createElement("select");
    select.className = "operator";
    OPERATORS.forEach(function (op) {
      var option = document.createElement("option");
      option.textContent = op;
      select.appendChild(option);
    });
    select.value = operator || "=";
    var valueInput = document.createElement("input");
    valueInput.className = "value";
    valueInput.placeholder = "value (JSON or text)";
    valueInput.value = value || "";
    var remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.setAttribute("aria-label", "remove filter");
    remove.addEventListener("click", function () { row.remove(); });
    row.append(fieldInput, select, valueInput, remove);
    $("filters").appendChild(row);
  }

  function filters() {
    return Array.prototype.map.call(document.querySelectorAll(".filter"), function (row) {
      return { field: row.querySelector(".field").value.trim(),
               operator: row.querySelector(".operator").value,
               value: parseValue(row.querySelector(".value").value) };
    }).filter(function (f) { return f.field; });
  }

  function search(query) {
    return fetch("/api/channels/" + encodeURIComponent(page.channel) + "/search", {
      method: "POST", headers: { "Content-Type": "application/json", "X-Api-Key": page.apiKey },
      body: JSON.stringify(query)
    }).then(function (response) {
      return response.json().then(function (body) {
        if (!response.ok) throw new Error(body.error.message);
        return body;
      });
    });
  }

  function cell(text, className) {
    var td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function exportLinks() {
    var params = filters().length ? "&filters=" + encodeURIComponent(JSON.stringify(filters())) : "";
    var base = "/api/channels/" + encodeURIComponent(page.channel) + "/export?format=";
    $("export-ndjson").href = base + "ndjson" + params;
    $("export-csv").href = base + "csv" + params;
  }

  function run() {
    var limit = Math.max(1, Math.min(1000, parseInt($("limit").value, 10) || 25));
    $("error").textContent = "";
    exportLinks();
    return search({ filters: filters(), sortField: $("sort-field").value.trim() || "created",
                    sortOrder: $("sort-order").value, offset: offset, limit: limit })
      .then(function (result) {
        var body = document.querySelector("#records tbody");
        body.textContent = "";
        result.items.forEach(function (record) {
          var row = document.createElement("tr");
          row.append(cell(String(record.seq)), cell(new Date(record.created).toISOString()),
                     cell(record.username || "—"), cell(record.client_id),
                     cell(JSON.stringify(record.data), "data"));
          body.appendChild(row);
        });
        var last = Math.min(offset + limit, result.total);
        $("summary").textContent = result.total ? (offset + 1) + "–" + last + " of " + result.total
                                                 : "no records match";
        $("prev").disabled = offset === 0;
        $("next").disabled = last >= result.total;
      })
      .catch(function (error) {  // no rows or paging left over from the search before
        document.querySelector("#records tbody").textContent = "";
        $("summary").textContent = "";
        $("prev").disabled = $("next").disabled = true;
        $("error").textContent = error.message;
      });
  }

  function chart() {
    var field = $("group-by").value.trim();
    if (!field) return Promise.resolve();
    return search({ filters: filters(), groupBy: field, limit: 50 }).then(function (result) {
      var box = $("chart");
      box.textContent = "";
      var most = result.groups.length ? result.groups[0].count : 1;
      result.groups.forEach(function (group) {
        var row = document.createElement("div");
        row.className = "row";
        var label = document.createElement("span");
        label.className = "label";
        label.textContent = JSON.stringify(group.value);
        var bar = document.createElement("span");
        bar.className = "bar";
        bar.style.width = (300 * group.count / most) + "px";
        var count = document.createElement("span");
        count.className = "count";
        count.textContent = String(group.count);
        row.append(label, bar, count);
        box.appendChild(row);
      });
    }).catch(function (error) { $("error").textContent = error.message; });
  }

  $("add-filter").addEventListener("click", function () { addFilter(); });
  $("search").addEventListener("click", function () { offset = 0; run(); });
  $("next").addEventListener("click", function () {
    offset += parseInt($("limit").value, 10) || 25;
    run();
  });
  $("prev").addEventListener("click", function () {
    offset = Math.max(0, offset - (parseInt($("limit").value, 10) || 25));
    run();
  });
  $("chart-button").addEventListener("click", chart);
  run();
})();
