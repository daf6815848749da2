// Reaction game: each round's score is stored; the board is a search sorted by score, top 5.
var ws = new c8PlayerApi.webSocket({persistent: true});
var pad = document.getElementById("pad");
var greenAt = 0;
var timer = null;

function refresh() {
  ws.search({sortField: "data.score", sortOrder: "desc", limit: 5,
             filters: [{field: "data.score", operator: "exists", value: true}]})
    .then(function (result) {
      var board = document.getElementById("board");
      board.textContent = "";
      result.items.forEach(function (record) {
        var item = document.createElement("li");
        item.textContent = (record.username || "anonymous") + " — " + record.data.score;
        board.appendChild(item);
      });
    });
}

pad.addEventListener("click", function () {
  if (pad.className === "go") {
    var score = Math.max(0, 1000 - (Date.now() - greenAt));
    document.getElementById("result").textContent = "Score: " + score;
    ws.publish({score: score});
    pad.className = "";
    pad.textContent = "Again";
  } else if (pad.className === "ready") {
    clearTimeout(timer);
    pad.className = "";
    pad.textContent = "Too early! Again";
  } else {
    pad.className = "ready";
    pad.textContent = "Wait…";
    timer = setTimeout(function () {
      pad.className = "go";
      pad.textContent = "Click!";
      greenAt = Date.now();
    }, 800 + Math.random() * 1500);
  }
});

ws.onOpen = refresh;
ws.onMessage = refresh;
