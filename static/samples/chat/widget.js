// Live chat: messages are stored (persistent), so a new viewer first loads the last 50.
var ws = new c8PlayerApi.webSocket({persistent: true});
var list = document.getElementById("messages");
var shown = {};

function show(record) {
  if (shown[record.id]) return;           // history and live messages can overlap
  shown[record.id] = true;
  var item = document.createElement("li");
  var who = document.createElement("span");
  who.className = "who";
  who.textContent = record.username || "anonymous";
  item.appendChild(who);
  item.appendChild(document.createTextNode(record.data.text));
  list.appendChild(item);
  list.scrollTop = list.scrollHeight;
}

ws.onOpen = function () {
  ws.search({sortField: "created", sortOrder: "desc", limit: 50}).then(function (result) {
    result.items.reverse().forEach(show);
  });
};
ws.onMessage = show;
ws.onActiveConnectionsChange = function (event) {
  document.getElementById("online").textContent = event.data + " online";
};

// No <form>: a sandboxed viewer (allow-scripts only) blocks form submission before "submit".
function send() {
  var input = document.getElementById("text");
  if (input.value.trim()) ws.publish({text: input.value.trim()});
  input.value = "";
}
document.getElementById("send-button").addEventListener("click", send);
document.getElementById("text").addEventListener("keydown", function (event) {
  if (event.key === "Enter" && !event.isComposing) send();
});
