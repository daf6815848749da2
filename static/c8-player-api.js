/*
 * c8-player-api.js: the Cinema8 widget WebSocket API (`c8PlayerApi.webSocket`) over a c8ws server.
 *
 * Plain ES2017, no build step, no dependencies. Speaks the `c8` dialect (one JSON object with one
 * top-level key per frame), reconnects with jittered backoff, resumes with since/epoch and hands
 * every record to the widget exactly once. Never touches cookies or storage, so it runs inside
 * `<iframe sandbox="allow-scripts">`.
 */
(function (global) {
  "use strict";

  var VERSION = "1.0.0";

  // An earlier copy of this file already set everything up: keep its sockets and its bus.
  if (global.c8PlayerApi && global.c8PlayerApi.webSocket && global.c8PlayerApi.version) {
    return;
  }

  var BACKOFF_BASE_MS = 250;
  var BACKOFF_RATE_LIMITED_MS = 2000;
  var BACKOFF_CAP_MS = 10000;
  // A connection that lived this long resets the backoff: one drop after a good session
  // reconnects quickly, a server that accepts then drops at once does not get hammered.
  var STABLE_AFTER_MS = 10000;
  var SEARCH_TIMEOUT_MS = 30000;
  // Browsers cannot see a half-open TCP connection; a quiet socket is pinged, then given up on.
  var IDLE_PING_MS = 25000;
  var PONG_TIMEOUT_MS = 10000;
  var MAX_QUEUED_FRAMES = 1000;
  // The share of the connection's rate limit (from the welcome) the shim sends at: frames that
  // reach the server bunched up by the network stay within it.
  var PACE_MARGIN = 0.9;
  // Refusals to retry as is would only be refused again (see the close-code table).
  var TERMINAL_CLOSE_CODES = [1008, 4001, 4002, 4003, 4004, 4009];
  // After a fatal `{"error": "..."}` frame only these codes mean "come back later"; any other
  // close (notably 1006, when the close frame got lost) ends it, as PieSocket's SDKs do.
  var RETRY_AFTER_FATAL_CODES = [1001, 1011, 1013, 4000, 4008, 4029];
  var HEARTBEAT_CLOSE_CODE = 4000;

  // Lifecycle of one widget socket. Every transition goes through `_setState`.
  var State = {
    IDLE: "idle", // constructed; the first connect runs on the next task
    CONNECTING: "connecting", // a WebSocket exists, the welcome frame has not arrived
    OPEN: "open", // welcome received: frames flow
    WAITING: "waiting", // dropped; a reconnect timer is running
    CLOSED: "closed", // close() was called or the server refused us: final
  };
  var TRANSITIONS = {
    idle: ["connecting", "waiting", "closed"], // waiting: a first attempt could not start
    connecting: ["open", "waiting", "closed"],
    open: ["waiting", "closed"],
    waiting: ["connecting", "closed"],
    closed: [],
  };

  // ---- configuration -------------------------------------------------------------------------

  var currentScript = global.document ? global.document.currentScript : null;
  var scriptConfig = readScriptConfig(currentScript);
  var queryConfig = readQueryConfig();

  function readScriptConfig(script) {
    var config = {};
    if (!script || !script.getAttribute) {
      return config;
    }
    var attributes = {
      url: "data-url",
      apiKey: "data-api-key",
      channel: "data-channel",
      token: "data-token",
      clientId: "data-client-id",
      debug: "data-debug",
    };
    Object.keys(attributes).forEach(function (key) {
      var value = script.getAttribute(attributes[key]);
      if (value !== null && value !== "") {
        config[key] = value;
      }
    });
    if (script.src) {
      config.scriptSrc = script.src;
    }
    return config;
  }

  function readQueryConfig() {
    var config = {};
    var search = global.location && global.location.search;
    if (!search || typeof URLSearchParams === "undefined") {
      return config;
    }
    var params = new URLSearchParams(search);
    // Never the server: whoever wrote a link must not send the page's users, and the tokens
    // the page gives them, to a server of their choosing.
    var names = {
      apiKey: "c8ws_api_key",
      channel: "c8ws_channel",
      token: "c8ws_token",
      clientId: "c8ws_client_id",
      debug: "c8ws_debug",
    };
    Object.keys(names).forEach(function (key) {
      var value = params.get(names[key]);
      if (value !== null && value !== "") {
        config[key] = value;
      }
    });
    return config;
  }

  // Milliseconds that never go back (the wall clock may, when it is set), for the pacing.
  function monotonicMs() {
    return global.performance && typeof global.performance.now === "function" ? global.performance.now() : Date.now();
  }

  function present(value) {
    return value !== undefined && value !== null && value !== "";
  }

  // Which of `sources` (most trusted first) has `key`, or -1.
  function sourceOf(key, sources) {
    for (var i = 0; i < sources.length; i++) {
      if (sources[i] && present(sources[i][key])) {
        return i;
      }
    }
    return -1;
  }

  function pick(key, sources) {
    var i = sourceOf(key, sources);
    return i < 0 ? undefined : sources[i][key];
  }

  function flag(value, fallback) {
    if (value === undefined || value === null || value === "") {
      return fallback;
    }
    if (typeof value === "string") {
      return !/^(0|false|no|off)$/i.test(value);
    }
    return Boolean(value);
  }

  // window.C8WS is read for every new socket, so a page may set it after loading this file.
  function resolveConfig(options) {
    var page = global.C8WS && typeof global.C8WS === "object" ? global.C8WS : {};
    var sources = [page, scriptConfig, queryConfig];
    var debugFrom = sourceOf("debug", sources);
    options = options || {};
    return {
      url: pick("url", sources),
      apiKey: String(pick("apiKey", sources) || "demo"),
      channel: String(present(options.channel) ? options.channel : pick("channel", sources) || "default"),
      token: pick("token", sources),
      clientId: pick("clientId", sources),
      persistent: flag(present(options.persistent) ? options.persistent : page.persistent, false),
      notifySelf: flag(present(options.notifySelf) ? options.notifySelf : page.notifySelf, true),
      debug: flag(pick("debug", sources), false),
      // Asked for by a link, the frames go to this page only, never to a frame's parent,
      // which may be another site's.
      debugToParent: debugFrom !== sources.indexOf(queryConfig),
    };
  }

  // The ws(s):// base of a URL (no trailing slash), or null when it is not http(s) or ws(s).
  function socketBase(candidate, keepPath) {
    var parsed;
    try {
      parsed = new URL(String(candidate), global.location ? global.location.href : undefined);
    } catch (error) {
      return null;
    }
    var scheme = { "http:": "ws:", "https:": "wss:", "ws:": "ws:", "wss:": "wss:" }[parsed.protocol];
    if (!scheme) {
      return null;
    }
    return scheme + "//" + parsed.host + (keepPath ? parsed.pathname.replace(/\/+$/, "") : "");
  }

  // A configured url (which may carry a path prefix, for a reverse proxy) and nothing else;
  // without one, the origin this file was loaded from, then the page's own.
  function serverBase(url) {
    if (present(url)) {
      return socketBase(url, true);
    }
    var fallbacks = [scriptConfig.scriptSrc, global.location && global.location.origin];
    for (var i = 0; i < fallbacks.length; i++) {
      // A sandboxed frame's origin is the string "null".
      var base = present(fallbacks[i]) && fallbacks[i] !== "null" ? socketBase(fallbacks[i], false) : null;
      if (base !== null) {
        return base;
      }
    }
    return null;
  }

  // ---- the debug hook and guarded calls ------------------------------------------------------

  function post(config, message) {
    if (!config.debug) {
      return;
    }
    try {
      (config.debugToParent && global.parent || global).postMessage(message, "*");
    } catch (error) {
      // A detached frame has no parent to tell; debugging must never break the widget.
    }
  }

  function report(config, error, where) {
    var message = error && error.message ? error.message : String(error);
    if (global.console && global.console.error) {
      // The playground's viewer harness knows this line by its text and does not forward it:
      // the post below brings the same error to the host, with its stack.
      global.console.error("c8PlayerApi: " + where + " threw", error);
    }
    post(config, {
      c8ws: "error",
      message: message,
      stack: error && error.stack ? String(error.stack) : "",
      where: where,
    });
  }

  // Run widget code; whatever it throws is reported and swallowed so the shim keeps going.
  function guard(config, where, fn, self, args) {
    if (typeof fn !== "function") {
      return;
    }
    try {
      fn.apply(self, args || []);
    } catch (error) {
      report(config, error, where);
    }
  }

  // ---- the event bus -------------------------------------------------------------------------

  var listeners = Object.create(null);
  // The shim's own listeners (closing its sockets on widgetDestroy): called first, and off()
  // does not take them away.
  var ownListeners = Object.create(null);

  function on(event, fn) {
    if (typeof fn !== "function") {
      throw new TypeError("c8PlayerApi.on: the listener must be a function");
    }
    (listeners[event] = listeners[event] || []).push(fn);
  }

  function off(event, fn) {
    var list = listeners[event];
    if (!list) {
      return;
    }
    if (fn === undefined) {
      delete listeners[event];
      return;
    }
    var index = list.lastIndexOf(fn);
    if (index !== -1) {
      list.splice(index, 1);
    }
  }

  function emit(event) {
    var args = Array.prototype.slice.call(arguments, 1);
    // A copy: listeners may add or remove listeners while being called.
    var list = (ownListeners[event] || []).concat(listeners[event] || []);
    var config = resolveConfig();
    for (var i = 0; i < list.length; i++) {
      guard(config, "listener for " + event, list[i], null, args);
    }
  }

  // ---- the socket ----------------------------------------------------------------------------

  var sockets = [];
  var nextSocketId = 1;

  function C8Socket(options) {
    if (!(this instanceof C8Socket)) {
      return new C8Socket(options);
    }
    this.onOpen = null;
    this.onMessage = null;
    this.onActiveConnectionsChange = null;
    this.onClose = null;
    this.onError = null;
    this._outageTold = false; // onError had `unreachable` since the last open

    this._id = nextSocketId++;
    this._config = resolveConfig(options);
    this._state = State.IDLE;
    this._ws = null;
    this._clientId = present(this._config.clientId) ? String(this._config.clientId) : null;
    this._epoch = null;
    // The channel's seq at a fresh welcome: where a resume starts if no record came since.
    this._baseline = null;
    // De-duplication floor: the highest seq handed to onMessage (or resumed from) in this epoch.
    this._floor = null;
    this._resuming = false;
    this._lastWelcome = null;
    this._outbox = [];
    this._pending = {};
    this._ridCounter = 0;
    this._attempt = 0;
    this._backoffFloor = BACKOFF_BASE_MS;
    this._openedAt = 0;
    this._timer = null;
    this._idleTimer = null;
    this._pongTimer = null;
    this._fatalMessage = null;
    this._maxFrameBytes = 0;
    this._bucket = null; // the server's rate limit for this connection, mirrored
    this._paceTimer = null;
    this.connections = 0;

    sockets.push(this);
    var self = this;
    // Connect on the next task: widgets assign their handlers right after `new`.
    this._timer = setTimeout(function () {
      self._timer = null;
      self._connect();
    }, 0);
  }

  Object.defineProperty(C8Socket.prototype, "state", {
    get: function () {
      return this._state;
    },
  });

  Object.defineProperty(C8Socket.prototype, "clientId", {
    get: function () {
      return this._clientId;
    },
  });

  Object.defineProperty(C8Socket.prototype, "channel", {
    get: function () {
      return this._config.channel;
    },
  });

  C8Socket.prototype._setState = function (next) {
    if (TRANSITIONS[this._state].indexOf(next) === -1) {
      throw new Error("c8PlayerApi: illegal transition " + this._state + " -> " + next);
    }
    this._state = next;
  };

  C8Socket.prototype._status = function (status, extra) {
    var message = { c8ws: "status", status: status, channel: this._config.channel, socket: this._id };
    if (extra) {
      Object.keys(extra).forEach(function (key) {
        message[key] = extra[key];
      });
    }
    post(this._config, message);
  };

  C8Socket.prototype._call = function (name, args) {
    guard(this._config, name, this[name], this, args);
  };

  C8Socket.prototype._error = function (code, message, extra) {
    var error = { code: code, message: message };
    if (extra) {
      Object.keys(extra).forEach(function (key) {
        error[key] = extra[key];
      });
    }
    this._call("onError", [error]);
  };

  C8Socket.prototype._url = function (since) {
    var config = this._config;
    var base = serverBase(config.url);
    if (base === null) {
      return null;
    }
    var params = ["api_key=" + encodeURIComponent(config.apiKey)];
    if (config.persistent) {
      params.push("persistent=1");
    }
    params.push("notify_self=" + (config.notifySelf ? "1" : "0"));
    if (this._clientId) {
      params.push("client_id=" + encodeURIComponent(this._clientId));
    }
    var token = typeof config.token === "function" ? config.token() : config.token;
    if (present(token)) {
      params.push("jwt=" + encodeURIComponent(String(token)));
    }
    if (since !== null) {
      params.push("since=" + since, "epoch=" + encodeURIComponent(this._epoch));
    }
    return base + "/c8/" + encodeURIComponent(config.channel) + "?" + params.join("&");
  };

  C8Socket.prototype._resumeSeq = function () {
    if (this._baseline === null) {
      return this._floor;
    }
    return this._floor === null ? this._baseline : Math.max(this._floor, this._baseline);
  };

  C8Socket.prototype._connect = function () {
    if (this._state === State.CLOSED) {
      return;
    }
    var since = this._epoch !== null ? this._resumeSeq() : null;
    var url;
    try {
      url = this._url(since);
    } catch (error) {
      // The page's token function failed (while it swaps its tag, say): not for good.
      report(this._config, error, "token");
      this._error("token_failed", "c8PlayerApi: the token function threw: " +
        (error && error.message ? error.message : String(error)));
      if (this._state !== State.CLOSED) {
        if (this._state !== State.WAITING) {
          this._setState(State.WAITING);
        }
        this._scheduleReconnect(0);
      }
      return;
    }
    if (url === null) {
      this._setState(State.CLOSED);
      if (present(this._config.url)) {
        this._error("bad_url", "c8PlayerApi: the server url " + JSON.stringify(String(this._config.url)) +
          " is not an http(s):// or ws(s):// URL.");
      } else {
        this._error("no_url", "c8PlayerApi: no server url: set window.C8WS.url or data-url on the script tag.");
      }
      this._finish({ code: 1006, reason: "no server url", wasClean: false }, true);
      return;
    }
    this._setState(State.CONNECTING);
    // The url helps a playground show what resumed from where; the token stays out of it.
    this._status("connecting", { url: url.replace(/([?&]jwt=)[^&]*/, "$1redacted") });
    this._fatalMessage = null;
    this._resuming = since !== null;
    if (this._resuming) {
      // Whatever the server sends at or below `since` was delivered already (or predates us).
      this._floor = since;
    }
    var ws;
    try {
      ws = new WebSocket(url);
    } catch (error) {
      // A malformed url (bad host in the configuration) throws synchronously.
      this._setState(State.CLOSED);
      this._error("bad_url", "c8PlayerApi: cannot open " + url.split("?")[0] + ": " + (error && error.message));
      this._finish({ code: 1006, reason: String(error && error.message), wasClean: false }, true);
      return;
    }
    this._ws = ws;
    var self = this;
    ws.onmessage = function (event) {
      if (self._ws === ws) {
        self._receive(event.data);
      }
    };
    ws.onclose = function (event) {
      if (self._ws === ws) {
        self._dropped({ code: event.code, reason: event.reason, wasClean: event.wasClean });
      }
    };
    // The close event that always follows carries what there is to know.
    ws.onerror = function () {};
  };

  C8Socket.prototype._receive = function (text) {
    post(this._config, { c8ws: "frame", direction: "in", data: text, time: Date.now() });
    this._touch();
    if (typeof text !== "string") {
      return; // the c8 dialect sends no binary frames
    }
    var frame;
    try {
      frame = JSON.parse(text);
    } catch (error) {
      return;
    }
    if (!frame || typeof frame !== "object") {
      return;
    }
    if (frame.welcome) {
      this._welcome(frame.welcome);
    } else if (frame.message) {
      this._record(frame.message);
    } else if (frame.connections !== undefined) {
      this._connections(frame.connections);
    } else if (frame.reply) {
      this._reply(frame.reply);
    } else if (frame.recovered) {
      this._recovered(frame.recovered);
    } else if (frame.error !== undefined) {
      this._serverError(frame.error);
    }
    // `{"system":"pong"}` and frames from newer servers need nothing beyond `_touch`.
  };

  C8Socket.prototype._welcome = function (welcome) {
    if (this._state !== State.CONNECTING) {
      return;
    }
    if (!this._clientId && welcome.client_id) {
      this._clientId = String(welcome.client_id);
    }
    if (!this._resuming) {
      // A fresh start: records up to here are history. The floor stays unset, because a record
      // published while we joined can arrive right after the welcome with seq <= welcome.seq.
      this._epoch = welcome.epoch === undefined ? null : String(welcome.epoch);
      this._baseline = typeof welcome.seq === "number" ? welcome.seq : null;
      this._floor = null;
    }
    this._lastWelcome = welcome;
    this._maxFrameBytes = typeof welcome.max_frame_bytes === "number" ? welcome.max_frame_bytes : 0;
    // The server's bucket for this connection starts full; so does its mirror.
    var rate = typeof welcome.msg_rate === "number" ? welcome.msg_rate * PACE_MARGIN : 0;
    var burst = typeof welcome.msg_burst === "number" ? Math.max(1, Math.floor(welcome.msg_burst * PACE_MARGIN)) : 1;
    this._bucket = rate > 0 ? { rate: rate, burst: burst, tokens: burst, updated: monotonicMs() } : null;
    this._setState(State.OPEN);
    this._openedAt = Date.now();
    this._status("open");
    this._flush();
    this._call("onOpen", []);
    if (this._state !== State.OPEN) {
      return; // onOpen closed the socket
    }
    if (typeof welcome.connections === "number") {
      this._connections(welcome.connections, true);
    }
  };

  C8Socket.prototype._record = function (record) {
    if (typeof record.seq === "number") {
      if (this._floor !== null && record.seq <= this._floor) {
        return; // already delivered before a reconnect
      }
      this._floor = record.seq;
    }
    this._call("onMessage", [record]);
  };

  // After onOpen (the welcome's count), then only changes: the server's count frame that
  // follows a welcome often repeats it.
  C8Socket.prototype._connections = function (count, afterOpen) {
    if (!afterOpen && count === this.connections) {
      return;
    }
    this.connections = count;
    this._call("onActiveConnectionsChange", [{ data: count }]);
  };

  C8Socket.prototype._recovered = function (recovered) {
    var welcome = this._lastWelcome || {};
    this._resuming = false;
    if (recovered.ok) {
      return;
    }
    // The gap cannot be filled: start over from this welcome (the epoch may have changed, and
    // with it the numbering, so the old floor would hide new records).
    this._epoch = welcome.epoch === undefined ? null : String(welcome.epoch);
    this._baseline = typeof welcome.seq === "number" ? welcome.seq : null;
    this._floor = null;
    this._error(
      "recovery_failed",
      "Messages published while disconnected could not be recovered; reload the widget's state."
    );
  };

  C8Socket.prototype._reply = function (reply) {
    var pending = reply.rid !== undefined ? this._pending[reply.rid] : undefined;
    if (!pending) {
      return;
    }
    var result = {};
    Object.keys(reply).forEach(function (key) {
      if (key !== "rid") {
        result[key] = reply[key];
      }
    });
    this._settle(reply.rid, null, result);
  };

  C8Socket.prototype._serverError = function (error) {
    if (typeof error === "string") {
      // A refusal: the close that follows says whether to come back.
      this._fatalMessage = error;
      return;
    }
    var code = String(error.code || "error");
    var message = String(error.message || code);
    if (error.rid !== undefined && this._pending[error.rid]) {
      this._settle(error.rid, searchError(code, message), null);
      return;
    }
    this._error(code, message);
  };

  C8Socket.prototype._dropped = function (event) {
    this._stopHeartbeat();
    this._stopPacing();
    this._ws = null;
    var wasOpen = this._state === State.OPEN;
    this._status("closed", { code: event.code });
    this._rejectSent("disconnected", "The connection dropped before the server answered.");
    var terminal =
      TERMINAL_CLOSE_CODES.indexOf(event.code) !== -1 ||
      (this._fatalMessage !== null && RETRY_AFTER_FATAL_CODES.indexOf(event.code) === -1);
    if (terminal) {
      this._setState(State.CLOSED);
      this._error("refused", this._fatalMessage || event.reason || "The server refused the connection.", {
        closeCode: event.code,
      });
      this._finish(event, true);
      return;
    }
    this._setState(State.WAITING);
    if (wasOpen) {
      this._outageTold = false;
      this._reportClose(event, true);
    } else if (!this._outageTold) {
      // No connection: the server is down or out of reach (1006), or it turns joins away for
      // now (1013: its broker is unreachable; 4029: too many connections; 1001: it is shutting
      // down). Said once per outage, not on every attempt, so a widget can show that it is
      // offline.
      this._outageTold = true;
      var server = serverBase(this._config.url);
      this._error("unreachable", event.code === 1006
        ? "c8PlayerApi: cannot connect to " + server + "; trying again."
        : "c8PlayerApi: " + server + " turned the connection away for now (" +
          (this._fatalMessage || event.reason || "close code " + event.code) + "); trying again.",
        { closeCode: event.code });
    }
    if (this._state === State.CLOSED) {
      return; // onClose or onError called close()
    }
    this._scheduleReconnect(event.code);
  };

  // onClose: once when an open connection drops (willReconnect) and once at the very end.
  C8Socket.prototype._reportClose = function (event, willReconnect) {
    this._call("onClose", [
      { code: event.code, reason: event.reason || "", wasClean: Boolean(event.wasClean), willReconnect: willReconnect },
    ]);
  };

  // The socket is done for good: fail what waits, forget it, tell the widget once.
  C8Socket.prototype._finish = function (event, refused) {
    this._rejectAll("closed", refused ? "The server refused the connection." : "The socket was closed.");
    this._outbox = [];
    var index = sockets.indexOf(this);
    if (index !== -1) {
      sockets.splice(index, 1);
    }
    this._reportClose(event, false);
  };

  C8Socket.prototype._scheduleReconnect = function (code) {
    if (this._openedAt && Date.now() - this._openedAt >= STABLE_AFTER_MS) {
      this._attempt = 0;
      this._backoffFloor = BACKOFF_BASE_MS;
    }
    this._openedAt = 0;
    if (code === 4029 || code === 1013) {
      this._backoffFloor = BACKOFF_RATE_LIMITED_MS;
    }
    var ceiling = Math.min(BACKOFF_CAP_MS, this._backoffFloor * Math.pow(2, this._attempt));
    var delay = Math.floor(Math.random() * ceiling); // full jitter
    this._attempt = Math.min(this._attempt + 1, 16);
    this._status("reconnecting", { code: code, delay: delay });
    var self = this;
    this._timer = setTimeout(function () {
      self._timer = null;
      self._connect();
    }, delay);
  };

  // A widget that comes back online should not sit out the rest of a long backoff.
  C8Socket.prototype._reconnectNow = function () {
    if (this._state === State.WAITING && this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
      this._connect();
    }
  };

  // ---- outgoing frames -----------------------------------------------------------------------

  C8Socket.prototype._send = function (text) {
    if (!this._ws) {
      return; // a handler closed the socket while frames were going out
    }
    post(this._config, { c8ws: "frame", direction: "out", data: text, time: Date.now() });
    this._ws.send(text);
  };

  // Send now if open and within the rate limit, else queue (up to MAX_QUEUED_FRAMES).
  C8Socket.prototype._enqueue = function (item) {
    if (this._state === State.OPEN && this._outbox.length === 0 && this._takeToken()) {
      this._transmit(item);
      return true;
    }
    if (this._outbox.length >= MAX_QUEUED_FRAMES) {
      return false;
    }
    this._outbox.push(item);
    if (this._state === State.OPEN) {
      this._pace();
    }
    return true;
  };

  C8Socket.prototype._takeToken = function () {
    var bucket = this._bucket;
    if (bucket === null) {
      return true;
    }
    var now = monotonicMs();
    bucket.tokens = Math.min(bucket.burst, bucket.tokens + ((now - bucket.updated) * bucket.rate) / 1000);
    bucket.updated = now;
    if (bucket.tokens < 1) {
      return false;
    }
    bucket.tokens -= 1;
    return true;
  };

  // Send what waits, as fast as the rate limit lets it through: past it the server drops frames.
  C8Socket.prototype._drain = function () {
    while (this._state === State.OPEN && this._outbox.length > 0 && this._takeToken()) {
      this._transmit(this._outbox.shift());
    }
    if (this._state === State.OPEN && this._outbox.length > 0) {
      this._pace();
    }
  };

  C8Socket.prototype._pace = function () {
    if (this._paceTimer !== null) {
      return;
    }
    var bucket = this._bucket;
    var wait = bucket === null ? 0 : Math.ceil(((1 - bucket.tokens) * 1000) / bucket.rate);
    var self = this;
    this._paceTimer = setTimeout(function () {
      self._paceTimer = null;
      self._drain();
    }, Math.max(wait, 1));
  };

  C8Socket.prototype._stopPacing = function () {
    if (this._paceTimer !== null) {
      clearTimeout(this._paceTimer);
      this._paceTimer = null;
    }
  };

  C8Socket.prototype._transmit = function (item) {
    if (this._maxFrameBytes && byteLength(item.text) > this._maxFrameBytes) {
      // The server would close the connection for good (4009); refuse this one frame instead.
      var message = "Message too large: the limit is " + this._maxFrameBytes + " bytes.";
      if (item.rid !== undefined) {
        this._settle(item.rid, searchError("too_large", message), null);
      } else {
        this._error("too_large", message);
      }
      return;
    }
    if (item.rid !== undefined) {
      var pending = this._pending[item.rid];
      if (!pending) {
        return; // settled while queued
      }
      pending.sent = true;
      var self = this;
      var rid = item.rid;
      pending.timer = setTimeout(function () {
        self._settle(rid, searchError("timeout", "The server did not answer the search in time."), null);
      }, SEARCH_TIMEOUT_MS);
    }
    this._send(item.text);
    if (item.ping) {
      this._awaitPong();
    }
  };

  C8Socket.prototype._flush = function () {
    this._drain();
    this._startHeartbeat();
  };

  C8Socket.prototype.publish = function (data) {
    if (this._state === State.CLOSED) {
      this._error("closed", "publish() after close(): the message was not sent.");
      return;
    }
    // Encoded now, so later changes to `data` do not alter a queued message.
    var text = JSON.stringify({ publish: { data: data === undefined ? null : data } });
    if (!this._enqueue({ text: text })) {
      this._error("queue_full", "Too many messages waiting to be sent; this one was dropped.");
    }
  };

  C8Socket.prototype.search = function (query, callback) {
    var self = this;
    var promise = new Promise(function (resolve, reject) {
      if (self._state === State.CLOSED) {
        reject(searchError("closed", "search() after close()."));
        return;
      }
      var rid = "s" + self._id + "-" + (++self._ridCounter).toString(36) + "-" + Math.random().toString(36).slice(2, 8);
      var text;
      try {
        text = JSON.stringify({ search: { rid: rid, query: query === undefined ? {} : query } });
      } catch (error) {
        reject(searchError("invalid_query", "The query cannot be encoded as JSON: " + error.message));
        return;
      }
      self._pending[rid] = { resolve: resolve, reject: reject, sent: false, timer: null };
      if (!self._enqueue({ text: text, rid: rid })) {
        self._settle(rid, searchError("queue_full", "Too many requests waiting to be sent."), null);
      }
    });
    if (typeof callback === "function") {
      var config = this._config;
      promise.then(
        function (result) {
          guard(config, "search callback", callback, null, [null, result]);
        },
        function (error) {
          guard(config, "search callback", callback, null, [error]);
        }
      );
    }
    return promise;
  };

  C8Socket.prototype._settle = function (rid, error, result) {
    var pending = this._pending[rid];
    if (!pending) {
      return;
    }
    delete this._pending[rid];
    if (pending.timer !== null) {
      clearTimeout(pending.timer);
    }
    if (error) {
      pending.reject(error);
    } else {
      pending.resolve(result);
    }
  };

  // Searches already on the wire cannot be answered by another connection.
  C8Socket.prototype._rejectSent = function (code, message) {
    var self = this;
    Object.keys(this._pending).forEach(function (rid) {
      if (self._pending[rid].sent) {
        self._settle(rid, searchError(code, message), null);
      }
    });
  };

  C8Socket.prototype._rejectAll = function (code, message) {
    var self = this;
    Object.keys(this._pending).forEach(function (rid) {
      self._settle(rid, searchError(code, message), null);
    });
  };

  C8Socket.prototype.close = function () {
    if (this._state === State.CLOSED) {
      return;
    }
    this._setState(State.CLOSED);
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
    this._stopHeartbeat();
    this._stopPacing();
    var ws = this._ws;
    // Detach first: onClose should not wait on the server's side of the close handshake.
    this._ws = null;
    if (ws) {
      try {
        ws.close(1000, "closed by the widget");
      } catch (error) {
        // Already closing; it is forgotten either way.
      }
      this._status("closed", { code: 1000 });
    }
    this._rejectAll("closed", "The socket was closed.");
    this._outbox = [];
    var self = this;
    // onClose runs on a later task, as a WebSocket's onclose would, never inside close().
    setTimeout(function () {
      self._finish({ code: 1000, reason: "closed by the widget", wasClean: true }, false);
    }, 0);
  };

  // ---- heartbeat -----------------------------------------------------------------------------

  C8Socket.prototype._touch = function () {
    if (this._state !== State.OPEN) {
      return;
    }
    if (this._pongTimer !== null) {
      clearTimeout(this._pongTimer);
      this._pongTimer = null;
    }
    this._startHeartbeat();
  };

  C8Socket.prototype._startHeartbeat = function () {
    if (this._idleTimer !== null) {
      clearTimeout(this._idleTimer);
    }
    var self = this;
    this._idleTimer = setTimeout(function () {
      self._idleTimer = null;
      if (self._state !== State.OPEN) {
        return;
      }
      // The server counts a ping against the rate limit like any frame: it waits for a token,
      // ahead of what else waits, and the pong is awaited once it is sent (see _transmit).
      self._outbox.unshift({ text: "cmd_ping", ping: true });
      self._drain();
    }, IDLE_PING_MS);
  };

  C8Socket.prototype._awaitPong = function () {
    var self = this;
    this._pongTimer = setTimeout(function () {
      self._pongTimer = null;
      self._abandon();
    }, PONG_TIMEOUT_MS);
  };

  C8Socket.prototype._stopHeartbeat = function () {
    if (this._idleTimer !== null) {
      clearTimeout(this._idleTimer);
      this._idleTimer = null;
    }
    if (this._pongTimer !== null) {
      clearTimeout(this._pongTimer);
      this._pongTimer = null;
    }
    // A ping still waiting for its turn was for this connection; the next starts its own.
    this._outbox = this._outbox.filter(function (item) {
      return !item.ping;
    });
  };

  // The server stopped answering: a dead connection's close handshake can take minutes, so
  // detach from it and reconnect now.
  C8Socket.prototype._abandon = function () {
    var ws = this._ws;
    if (!ws || this._state !== State.OPEN) {
      return;
    }
    try {
      ws.close(HEARTBEAT_CLOSE_CODE, "no answer to ping");
    } catch (error) {
      // Closing a dead socket may throw in some browsers; it is forgotten either way.
    }
    this._dropped({ code: HEARTBEAT_CLOSE_CODE, reason: "no answer to ping", wasClean: false });
  };

  // ---- helpers -------------------------------------------------------------------------------

  function searchError(code, message) {
    var error = new Error(message);
    error.code = code;
    return error;
  }

  function byteLength(text) {
    if (typeof TextEncoder !== "undefined") {
      return new TextEncoder().encode(text).length;
    }
    return unescape(encodeURIComponent(text)).length;
  }

  // ---- wiring --------------------------------------------------------------------------------

  function closeAll() {
    sockets.slice().forEach(function (socket) {
      socket.close();
    });
  }

  // Skip the rest of any backoff: the network (or the playground's "Reconnect") is back.
  function reconnectNow() {
    sockets.slice().forEach(function (socket) {
      socket._reconnectNow();
    });
  }

  if (global.addEventListener) {
    global.addEventListener("online", reconnectNow);
  }

  // Merge into a host's c8PlayerApi (the Cinema8 player defines one); keep its bus if it has one.
  var api = global.c8PlayerApi && typeof global.c8PlayerApi === "object" ? global.c8PlayerApi : {};
  var hostBus = typeof api.on === "function" && typeof api.emit === "function";
  if (!hostBus) {
    api.on = on;
    api.off = off;
    api.emit = emit;
  }
  api.webSocket = C8Socket;
  api.reconnectNow = reconnectNow;
  api.version = VERSION;
  if (hostBus) {
    api.on("widgetDestroy", closeAll);
  } else {
    ownListeners.widgetDestroy = [closeAll];
  }
  global.c8PlayerApi = api;
})(typeof window !== "undefined" ? window : this);
