/* The connections view: a server-sent event stream of per-channel counts and message totals
 * (changes only), a sparkline of each channel's rate, and members fetched on demand. Every
 * value from the server is inserted as text, never as HTML. */
(function () {
  "use strict";

  var page = window.ADMIN;
  var SAMPLES = 600; // 5 minutes of 0.5 s ticks
  var RELIST_MS = 1500; // after a disconnect, long enough for a client to have come back
  var channels = {};  // name -> {row, detail, rates, last, expanded, connections}
  var body = document.querySelector("#channels tbody");

  function cell(text) {
    var td = document.createElement("td");
    td.textContent = text;
    return td;
  }

  function sparkline(rates) {
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 " + SAMPLES + " 30");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("class", "spark");
    var top = Math.max(1, Math.max.apply(null, rates));
    var points = rates.map(function (rate, i) {
      return (SAMPLES - rates.length + i) + "," + (29 - 28 * rate / top).toFixed(1);
    });
    var line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.join(" "));
    svg.appendChild(line);
    return svg;
  }

  function api(path, method) {
    return fetch(path, { method: method || "GET", credentials: "same-origin",
                         headers: { "X-CSRF-Token": page.csrf } })
      .then(function (r) {
        // Our errors are JSON; a proxy's or a crash's page is not: say its status instead.
        return r.json().catch(function () { throw new Error("HTTP " + r.status); });
      });
  }

  function tell(text) {
    document.getElementById("action-status").textContent = text;
  }

  function renderMembers(name) {
    var channel = channels[name];
    api("/api/channels/" + encodeURIComponent(name) + "/connections").then(function (data) {
      var list = channel.detail.querySelector("tbody");
      list.textContent = "";
      data.members.forEach(function (m) {
        var row = document.createElement("tr");
        row.dataset.client = m.client_id;
        var flags = ["notify_self", "persistent", "presence"].filter(function (f) { return m[f]; });
        [m.client_id, m.dialect, m.username || m.user || "—", m.uuid, m.origin || "—",
         new Date(m.connected_at * 1000).toLocaleTimeString(), m.messages_in, m.messages_out,
         m.queue_depth, flags.join(" ") || "—"].forEach(function (v) {
          row.appendChild(cell(String(v)));
        });
        var action = document.createElement("td");
        var button = document.createElement("button");
        button.type = "button";
        button.textContent = "Disconnect";
        button.addEventListener("click", function () {
          button.disabled = true;
          api("/api/channels/" + encodeURIComponent(name) + "/members/" +
              encodeURIComponent(m.client_id) + "/disconnect", "POST").then(function (result) {
            if (result.error && result.error.code !== "not_found") {  // not_found: gone already
              throw new Error(result.error.message);
            }
            button.textContent = result.disconnected ? "Disconnected" : "Already gone";
            // Said above the table too: the member's row goes once the count changes, and the
            // channel's row with it when that member was the last.
            tell(result.disconnected
              ? "Disconnected " + m.client_id + " from " + name + " (close code 4000)."
              : m.client_id + " had already left " + name + ".");
            // Closed with 4000, a client may come back at once: show who is there now.
            setTimeout(function () {
              if (channels[name] === channel && channel.expanded) renderMembers(name);
            }, RELIST_MS);
          }).catch(function (error) {
            button.disabled = false;
            tell("Could not disconnect " + m.client_id + ": " + error.message);
          });
        });
        action.appendChild(button);
        row.appendChild(action);
        list.appendChild(row);
      });
    });
  }

  function addChannel(name) {
    var row = document.createElement("tr");
    row.className = "channel";
    row.dataset.channel = name;
    var toggle = document.createElement("button");
    toggle.type = "button";
    toggle.textContent = "▸";
    toggle.setAttribute("aria-label", "members of " + name);
    var first = document.createElement("td");
    first.appendChild(toggle);
    var history = document.createElement("a");
    history.href = "/history/" + encodeURIComponent(name);
    history.textContent = "history";
    var last = document.createElement("td");
    last.appendChild(history);
    row.append(first, cell(name), cell("0"), cell("0"), document.createElement("td"), last);
    var detail = document.createElement("tr");
    detail.className = "members";
    detail.hidden = true;
    var holder = document.createElement("td");
    holder.colSpan = 6;
    var table = document.createElement("table");
    var head = document.createElement("thead");
    var headRow = document.createElement("tr");
    ["client id", "dialect", "user", "uuid", "origin", "since", "in", "out", "queued", "flags", ""]
      .forEach(function (h) { var th = document.createElement("th"); th.textContent = h; headRow.appendChild(th); });
    head.appendChild(headRow);
    table.append(head, document.createElement("tbody"));
    holder.appendChild(table);
    detail.appendChild(holder);
    body.append(row, detail);
    var channel = channels[name] = { row: row, detail: detail, rates: [], last: null,
                                     expanded: false, connections: 0 };
    toggle.addEventListener("click", function () {
      channel.expanded = !channel.expanded;
      detail.hidden = !channel.expanded;
      toggle.textContent = channel.expanded ? "▾" : "▸";
      if (channel.expanded) renderMembers(name);
    });
    return channel;
  }

  function tick(event) {
    var seen = {};
    event.changed.forEach(function (c) {
      var channel = channels[c.channel] || addChannel(c.channel);
      var rate = channel.last === null ? 0 : Math.max(0, (c.messages - channel.last) / 0.5);
      channel.pendingRate = rate;
      channel.last = c.messages;
      if (channel.connections !== c.connections && channel.expanded) renderMembers(c.channel);
      channel.connections = c.connections;
      channel.row.children[2].textContent = String(c.connections);
      seen[c.channel] = true;
    });
    event.gone.forEach(function (name) {
      var channel = channels[name];
      if (!channel) return;
      channel.row.remove();
      channel.detail.remove();
      delete channels[name];
    });
    Object.keys(channels).forEach(function (name) {
      var channel = channels[name];
      var rate = seen[name] ? channel.pendingRate : 0;
      channel.rates.push(rate);
      if (channel.rates.length > SAMPLES) channel.rates.shift();
      channel.row.children[3].textContent = rate.toFixed(1);
      var spark = channel.row.children[4];
      spark.textContent = "";
      spark.appendChild(sparkline(channel.rates));
    });
    document.getElementById("empty").hidden = Object.keys(channels).length > 0;
  }

  var source = new EventSource("/api/events");
  source.onopen = function () { document.getElementById("live-status").textContent = "live"; };
  source.onerror = function () {
    document.getElementById("live-status").textContent = "reconnecting…";
  };
  source.onmessage = function (message) { tick(JSON.parse(message.data)); };
})();
