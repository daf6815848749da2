// Collaborative cursors: positions are not stored (persistent: false) and are sent at most
// 20 times a second; each other viewer's cursor is drawn where it last was.
var ws = new c8PlayerApi.webSocket({persistent: false, notifySelf: false});
var board = document.getElementById("board");
var cursors = {};
var lastSent = 0;

function colour(name) {
  var hash = 0;
  for (var i = 0; i < name.length; i++) hash = (hash * 31 + name.charCodeAt(i)) % 360;
  return "hsl(" + hash + ", 70%, 45%)";
}

board.addEventListener("mousemove", function (event) {
  var now = Date.now();
  if (now - lastSent < 50) return;
  lastSent = now;
  ws.publish({x: event.clientX / board.clientWidth, y: event.clientY / board.clientHeight});
});

ws.onMessage = function (record) {
  var name = record.username || record.client_id;
  var cursor = cursors[record.client_id];
  if (!cursor) {
    cursor = cursors[record.client_id] = document.createElement("div");
    cursor.className = "cursor";
    cursor.style.background = colour(name);
    var label = document.createElement("span");
    label.textContent = name;
    cursor.appendChild(label);
    board.appendChild(cursor);
  }
  cursor.style.left = (record.data.x * board.clientWidth) + "px";
  cursor.style.top = (record.data.y * board.clientHeight) + "px";
};
