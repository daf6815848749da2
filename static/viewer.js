/* Builds the document a widget runs in: a sandboxed iframe (no allow-same-origin), with the
 * harness (console and error reporting, disconnect/reconnect commands), its C8WS configuration
 * and the c8PlayerApi shim loaded from this server. Used by the playground and /embed. */
(function () {
  "use strict";

  function scriptSafe(text) {
    // Inline <script>/<style> bodies end at the first "</script"/"</style": break those up.
    return String(text).replace(/<\/(script|style)/gi, "<\\/$1");
  }

  function viewerDocument(widget, config, origin) {
    var json = JSON.stringify(config).replace(/</g, "\\u003c");
    return [
      "<!doctype html><html><head><meta charset=\"utf-8\">",
      "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
      "<style>", scriptSafe(widget.css || ""), "</style>",
      // Loaded with CORS: a cross-origin script's errors and rejections would be muted.
      "<script src=\"", origin, "/static/viewer-harness.js\" crossorigin></script>",
      "<script>window.C8WS = ", json, ";</script>",
      "<script src=\"", origin, "/static/c8-player-api.js\" crossorigin></script>",
      "</head><body>", widget.html || "",
      "<script>", scriptSafe(widget.js || ""), "\n</script>",
      "</body></html>"
    ].join("");
  }

  function createViewerFrame(widget, config, origin) {
    var frame = document.createElement("iframe");
    frame.setAttribute("sandbox", "allow-scripts");
    frame.setAttribute("title", "widget viewer");
    frame.srcdoc = viewerDocument(widget, config, origin);
    return frame;
  }

  window.c8wsViewer = { viewerDocument: viewerDocument, createViewerFrame: createViewerFrame };
})();
