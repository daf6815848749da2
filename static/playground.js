/* The playground: pick or write a widget, run it in several sandboxed viewers at once (each a
 * different signed-in user), watch each viewer's frames, save and share. Everything user-made is
 * inserted with textContent or into sandboxed iframes, never as HTML of this page. */
(function () {
  "use strict";

  var page = window.PLAYGROUND;
  var origin = location.origin;
  var NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"];
  var MAX_CONSOLE_LINES = 300;

  var state = { widget: null, viewers: [], nextName: 0 };
  var $ = function (id) { return document.getElementById(id); };

  var editors = {};
  ["html", "css", "js"].forEach(function (kind) {
    var modes = { html: "htmlmixed", css: "css", js: "javascript" };
    editors[kind] = CodeMirror.fromTextArea($("code-" + kind), {
      mode: modes[kind], lineNumbers: true, tabSize: 2, indentUnit: 2, viewportMargin: 20
    });
  });

  function notice(text, isError) {
    var box = $("notice");
    box.textContent = text;
    box.className = isError ? "error" : "ok";
  }

  function api(path, options) {
    options = options || {};
    var headers = Object.assign({ "X-Api-Key": page.apiKey }, options.headers || {});
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    return fetch(path, { method: options.method || "GET", headers: headers,
                         body: options.body === undefined ? undefined : JSON.stringify(options.body),
                         credentials: "same-origin" })
      .then(function (response) {
        return response.json().then(function (body) {
          if (!response.ok) {
            var error = new Error(body.error ? body.error.message : response.statusText);
            error.status = response.status;
            throw error;
          }
          return body;
        });
      });
  }

  // Widgets ------------------------------------------------------------------------------------

  function renderList(widgets) {
    var list = $("widget-list");
    list.textContent = "";
    widgets.forEach(function (widget) {
      var item = document.createElement("li");
      var button = document.createElement("button");
      button.type = "button";
      button.textContent = widget.name;
      button.dataset.widget = widget.id;
      if (state.widget && state.widget.id === widget.id) button.className = "current";
      button.addEventListener("click", function () { openWidget(widget.id); });
      item.appendChild(button);
      var tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = widget.builtin ? "sample" : "saved";
      item.appendChild(tag);
      list.appendChild(item);
    });
  }

  function loadList() {
    return api("/api/widgets").then(function (body) { renderList(body.widgets); return body; });
  }

  function openWidget(id) {
    return api("/api/widgets/" + encodeURIComponent(id)).then(function (widget) {
      state.widget = widget;
      $("widget-name").value = widget.name;
      $("widget-id").value = widget.id;
      editors.html.setValue(widget.html);
      editors.css.setValue(widget.css);
      editors.js.setValue(widget.js);
      if (!$("channel").dataset.touched) $("channel").value = widget.id;
      history.replaceState(null, "", "#widget=" + encodeURIComponent(widget.id));
      loadList();
      updateShare();
      reloadAll();
    });
  }

  function currentSource() {
    return { html: editors.html.getValue(), css: editors.css.getValue(),
             js: editors.js.getValue() };
  }

  function save() {
    var id = $("widget-id").value.trim();
    if (!id) {
      notice("Give the widget an id first: lowercase letters, digits and '-'.", true);
      return Promise.resolve();
    }
    var body = Object.assign({ name: $("widget-name").value.trim() || id }, currentSource());
    return api("/api/widgets/" + encodeURIComponent(id),
               { method: "PUT", body: body, headers: { "X-CSRF-Token": page.csrf } })
      .then(function (widget) {
        state.widget = widget;
        notice("Saved " + widget.name + ".");
        return loadList();
      })
      .catch(function (error) {
        notice(error.status === 401 ? "Sign in to save widgets." : "Not saved: " + error.message,
               true);
      });
  }

  function newWidget() {
    state.widget = { id: "my-widget", name: "My widget", builtin: false,
                     html: "<div id=\"out\"></div>\n", css: "body { font-family: sans-serif; }\n",
                     js: "var ws = new c8PlayerApi.webSocket({persistent: true});\n" +
                         "ws.onMessage = function (record) {\n" +
                         "  document.getElementById(\"out\").textContent = JSON.stringify(record.data);\n" +
                         "};\n" };
    $("widget-name").value = state.widget.name;
    $("widget-id").value = state.widget.id;
    editors.html.setValue(state.widget.html);
    editors.css.setValue(state.widget.css);
    editors.js.setValue(state.widget.js);
    // A new widget starts afresh: its own channel (unless one was typed), no sample selected.
    if (!$("channel").dataset.touched) $("channel").value = state.widget.id;
    history.replaceState(null, "", location.pathname);
    loadList();
    updateShare();
    reloadAll();
  }

  function updateShare() {
    if ($("share-box").hidden) return;
    var url = origin + "/embed/" + encodeURIComponent($("widget-id").value.trim()) +
              "?api_key=" + encodeURIComponent(page.apiKey) +
              "&channel=" + encodeURIComponent(channel());
    $("share-url").value = url;
    $("share-snippet").textContent =
      "<iframe src=\"" + url + "&user=NAME\" width=\"400\" height=\"300\"></iframe>";
  }

  function share() {
    $("share-box").hidden = false;
    updateShare();
    $("share-url").select();
    notice("Embed link ready; save first so it shows your edits.");
  }

  // Viewers ------------------------------------------------------------------------------------

  function channel() { return $("channel").value.trim() || "playground"; }

  function tokenFor(name, channelName) {
    return api("/broadcasting/auth", { method: "POST", headers: { "X-CSRF-Token": page.csrf },
                                       body: { channel_name: channelName, username: name } })
      .then(function (body) { return body.auth; });
  }

  function logLine(viewer, kind, text) {
    var line = document.createElement("li");
    line.className = kind;
    var time = new Date().toISOString().slice(11, 23);
    line.textContent = time + " " + text;
    viewer.console.appendChild(line);
    while (viewer.console.childNodes.length > MAX_CONSOLE_LINES) {
      viewer.console.removeChild(viewer.console.firstChild);
    }
    viewer.console.scrollTop = viewer.console.scrollHeight;
    if (kind === "error") {
      viewer.details.open = true;
      viewer.card.classList.add("has-error");
    }
  }

  function setStatus(viewer, status) {
    viewer.status.textContent = status;
    viewer.status.dataset.status = status;
  }

  function mountFrame(viewer) {
    if (viewer.frame) viewer.frame.remove();
    viewer.frame = null;
    viewer.card.classList.remove("has-error");
    setStatus(viewer, "loading");
    // Only the latest mount may insert a frame: a reload while a token is on its way would
    // otherwise leave two widgets running in one viewer.
    var mount = viewer.mount = (viewer.mount || 0) + 1;
    var channelName = viewer.channel || channel();
    var source = currentSource();
    return tokenFor(viewer.name, channelName).then(function (token) {
      if (mount !== viewer.mount) return;
      var config = { url: origin, apiKey: page.apiKey, channel: channelName, token: token,
                     persistent: $("persistent").checked, notifySelf: true, debug: true };
      viewer.frame = window.c8wsViewer.createViewerFrame(source, config, origin);
      viewer.frame.dataset.viewer = viewer.name;
      viewer.body.insertBefore(viewer.frame, viewer.body.firstChild);
    }).catch(function (error) {
      if (mount !== viewer.mount) return;
      setStatus(viewer, "error");
      logLine(viewer, "error", "\u2716 not started: " + error.message);
    });
  }

  function addViewer(fixedChannel) {
    var name = NAMES[state.nextName % NAMES.length] +
               (state.nextName >= NAMES.length ? String(state.nextName) : "");
    state.nextName += 1;
    if (typeof fixedChannel === "string") name = "replay";
    var card = document.createElement("article");
    card.className = "viewer";
    card.dataset.viewer = name;
    var header = document.createElement("header");
    var title = document.createElement("strong");
    title.textContent = name;
    var status = document.createElement("span");
    status.className = "status";
    var toggle = document.createElement("button");
    toggle.type = "button";
    toggle.textContent = "Disconnect";
    toggle.className = "connection";
    header.append(title, status, toggle);
    var body = document.createElement("div");
    body.className = "viewer-body";
    var details = document.createElement("details");
    var summary = document.createElement("summary");
    summary.textContent = "Console";
    var consoleList = document.createElement("ol");
    consoleList.className = "console";
    details.append(summary, consoleList);
    body.appendChild(details);
    card.append(header, body);
    $("viewers").appendChild(card);

    var viewer = { name: name, card: card, body: body, status: status, console: consoleList,
                   details: details, frame: null, connected: true,
                   channel: typeof fixedChannel === "string" ? fixedChannel : null };
    if (viewer.channel) title.textContent = "replay (" + viewer.channel + ")";
    toggle.addEventListener("click", function () {
      if (!viewer.frame) return; // still loading
      viewer.connected = !viewer.connected;
      viewer.frame.contentWindow.postMessage(
        { c8wsCommand: viewer.connected ? "reconnect" : "disconnect" }, "*");
      toggle.textContent = viewer.connected ? "Disconnect" : "Reconnect";
      logLine(viewer, "info", viewer.connected ? "reconnecting…" : "disconnected by you");
    });
    state.viewers.push(viewer);
    return mountFrame(viewer);
  }

  function removeViewer() {
    var viewer = state.viewers.pop();
    if (viewer) viewer.card.remove();
  }

  function reloadAll() {
    return Promise.all(state.viewers.map(function (viewer) {
      viewer.connected = true;
      viewer.card.querySelector(".connection").textContent = "Disconnect";
      logLine(viewer, "info", "reloaded");
      return mountFrame(viewer);
    }));
  }

  window.addEventListener("message", function (event) {
    var message = event.data;
    if (!message || typeof message.c8ws !== "string") return;
    var viewer = state.viewers.find(function (v) {
      return v.frame && v.frame.contentWindow === event.source;
    });
    if (!viewer) return;
    if (message.c8ws === "frame") {
      logLine(viewer, message.direction === "out" ? "out" : "in",
              (message.direction === "out" ? "→ " : "← ") + String(message.data));
    } else if (message.c8ws === "status") {
      setStatus(viewer, String(message.status));
      logLine(viewer, "info", "socket " + message.status +
              (message.code ? " (" + message.code + ")" : ""));
    } else if (message.c8ws === "error") {
      logLine(viewer, "error", "✖ " + (message.where ? String(message.where) + " threw: " : "") +
              String(message.message) +
              (message.stack ? "\n" + String(message.stack) : ""));
    } else if (message.c8ws === "console") {
      logLine(viewer, message.level === "error" ? "error" : "log",
              "console." + message.level + ": " + String(message.message));
    }
  });

  // Replay -------------------------------------------------------------------------------------

  var replay = null;

  function replayCall(path, method, body) {
    return api(path, { method: method, body: body, headers: { "X-CSRF-Token": page.csrf } });
  }

  function showReplay(described) {
    var previous = replay;
    replay = described;
    $("replay-timeline").max = String(described.total);
    $("replay-timeline").value = String(described.position);
    $("replay-position").textContent = described.position + " / " + described.total + " · " +
                                       described.state;
    var viewer = state.viewers.find(function (v) { return v.name === "replay"; });
    if (viewer && previous && previous.channel !== described.channel) {
      viewer.channel = described.channel;  // a backward seek starts a fresh scratch channel
      viewer.card.querySelector("strong").textContent = "replay (" + described.channel + ")";
      mountFrame(viewer);
    }
  }

  function millis(input) {
    return input.value ? new Date(input.value).getTime() : undefined;
  }

  function startReplay() {
    var body = { channel: $("replay-channel").value.trim() || channel(),
                 speed: /^\d+$/.test($("replay-speed").value) ? Number($("replay-speed").value)
                                                             : $("replay-speed").value };
    var start = millis($("replay-from"));
    var end = millis($("replay-to"));
    if (start !== undefined) body.start = start;
    if (end !== undefined) body.end = end;
    return replayCall("/api/replays", "POST", body).then(function (described) {
      state.viewers.filter(function (v) { return v.name === "replay"; }).forEach(function (v) {
        v.card.remove();
        state.viewers.splice(state.viewers.indexOf(v), 1);
      });
      replay = described;
      showReplay(described);
      $("replay-controls").hidden = false;
      notice("Replaying " + described.total + " records of " + described.source + " into " +
             described.channel + ".");
      return addViewer(described.channel);
    }).catch(function (error) {
      notice(error.status === 401 ? "Sign in to replay." : "Replay failed: " + error.message, true);
    });
  }

  function controlReplay(action, body) {
    if (!replay) return Promise.resolve();
    return replayCall("/api/replays/" + replay.id + "/" + action, "POST", body).then(showReplay);
  }

  setInterval(function () {
    if (replay && replay.state !== "done") {
      api("/api/replays/" + replay.id, { headers: { "X-CSRF-Token": page.csrf } })
        .then(showReplay).catch(function () { replay = null; });
    }
  }, 500);

  // Wiring -------------------------------------------------------------------------------------

  document.querySelectorAll(".tabs [role=tab]").forEach(function (tab) {
    tab.addEventListener("click", function () {
      document.querySelectorAll(".tabs [role=tab]").forEach(function (other) {
        other.setAttribute("aria-selected", String(other === tab));
      });
      document.querySelectorAll(".pane").forEach(function (pane) {
        pane.hidden = pane.dataset.pane !== tab.dataset.tab;
      });
      editors[tab.dataset.tab].refresh();
    });
  });
  $("channel").addEventListener("change", function () {
    $("channel").dataset.touched = "1";
    if (!$("channel").checkValidity()) {  // the viewers stay where they are
      notice("A channel id is 1 to 64 letters, digits, '_' or '-'.", true);
      return;
    }
    updateShare();
    reloadAll();
  });
  $("persistent").addEventListener("change", reloadAll);
  $("run").addEventListener("click", reloadAll);
  $("save").addEventListener("click", save);
  $("share").addEventListener("click", share);
  $("widget-id").addEventListener("input", updateShare);
  $("new-widget").addEventListener("click", newWidget);
  $("add-viewer").addEventListener("click", function () { addViewer(); });
  $("replay-start").addEventListener("click", startReplay);
  $("replay-play").addEventListener("click", function () { controlReplay("play"); });
  $("replay-pause").addEventListener("click", function () { controlReplay("pause"); });
  $("replay-step").addEventListener("click", function () { controlReplay("step"); });
  $("replay-timeline").addEventListener("change", function () {
    controlReplay("seek", { position: Number($("replay-timeline").value) });
  });
  $("remove-viewer").addEventListener("click", removeViewer);

  var wanted = (location.hash.match(/widget=([a-z0-9-]+)/) || [])[1];
  loadList().then(function (body) {
    var first = wanted || (body.widgets[0] && body.widgets[0].id);
    return Promise.resolve(first ? openWidget(first) : newWidget())
      .then(function () { return Promise.all([addViewer(), addViewer()]); });
  }).catch(function (error) { notice("Could not load widgets: " + error.message, true); });
})();
