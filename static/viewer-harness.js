/* Runs inside a sandboxed widget viewer before the shim: reports console output and uncaught
 * errors to the host page, and obeys its disconnect/reconnect commands by closing the widget's
 * sockets and keeping new ones from reaching the server until told to reconnect. */
(function () {
  "use strict";

  function post(message) {
    try { window.parent.postMessage(message, "*"); } catch (ignored) { /* host gone */ }
  }

  function describe(value) {
    if (value instanceof Error) return value.stack || String(value);
    if (typeof value === "string") return value;
    try { return JSON.stringify(value); } catch (ignored) { return String(value); }
  }

  window.addEventListener("error", function (event) {
    post({ c8ws: "error", message: String(event.message),
           stack: event.error && event.error.stack ? String(event.error.stack) : "" });
  });
  window.addEventListener("unhandledrejection", function (event) {
    var reason = event.reason;
    post({ c8ws: "error", message: "Unhandled rejection: " + describe(reason),
           stack: reason && reason.stack ? String(reason.stack) : "" });
  });

  // What the shim logs of widget code that threw ("c8PlayerApi: onOpen threw", error) it
  // reports to the host itself, with the stack: forwarded too, it showed twice.
  var SHIM_REPORT = /^c8PlayerApi: .+ threw$/;

  ["log", "info", "warn", "error"].forEach(function (level) {
    var original = console[level];
    console[level] = function (first) {
      if (!(level === "error" && typeof first === "string" && SHIM_REPORT.test(first))) {
        post({ c8ws: "console", level: level,
               message: Array.prototype.map.call(arguments, describe).join(" ") });
      }
      return original.apply(console, arguments);
    };
  });

  var NativeWebSocket = window.WebSocket;
  var sockets = [];
  var offline = false;

  function unreachable(url) {
    // While "disconnected", new sockets go to a closed port so they fail at once; without the
    // query, so the browser's own log of each failure does not show the user's token.
    return String(url).replace(/^(wss?:\/\/)[^/]+([^?#]*).*$/, "$1127.0.0.1:9$2");
  }

  function HarnessedWebSocket(url, protocols) {
    var socket = protocols === undefined
      ? new NativeWebSocket(offline ? unreachable(url) : url)
      : new NativeWebSocket(offline ? unreachable(url) : url, protocols);
    sockets.push(socket);
    socket.addEventListener("close", function () {
      sockets = sockets.filter(function (s) { return s !== socket; });
    });
    return socket;
  }
  HarnessedWebSocket.prototype = NativeWebSocket.prototype;
  ["CONNECTING", "OPEN", "CLOSING", "CLOSED"].forEach(function (name) {
    HarnessedWebSocket[name] = NativeWebSocket[name];
  });
  window.WebSocket = HarnessedWebSocket;

  window.addEventListener("message", function (event) {
    var command = event.data && event.data.c8wsCommand;
    if (command === "disconnect") {
      offline = true;
      sockets.slice().forEach(function (socket) { socket.close(3000, "disconnected by the host"); });
      post({ c8ws: "status", status: "disconnected by the host" });
    } else if (command === "reconnect") {
      offline = false;
      if (window.c8PlayerApi && typeof window.c8PlayerApi.reconnectNow === "function") {
        window.c8PlayerApi.reconnectNow();
      }
    } else if (command === "destroy" && window.c8PlayerApi) {
      window.c8PlayerApi.emit("widgetDestroy");
    }
  });
})();
