// Poll: every vote is stored; the chart is a groupBy search over the votes, redrawn live.
var ws = new c8PlayerApi.webSocket({persistent: true});

function draw() {
  ws.search({groupBy: "data.vote", limit: 10}).then(function (result) {
    var chart = document.getElementById("chart");
    chart.textContent = "";
    var most = result.groups.length ? result.groups[0].count : 1;
    result.groups.forEach(function (group) {
      var row = document.createElement("div");
      row.className = "row";
      row.dataset.vote = group.value;
      var label = document.createElement("span");
      label.className = "label";
      label.textContent = group.value;
      var bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = (150 * group.count / most) + "px";
      var count = document.createElement("span");
      count.className = "count";
      count.textContent = group.count;
      row.append(label, bar, count);
      chart.appendChild(row);
    });
    document.getElementById("total").textContent = result.total + " votes";
  });
}

ws.onOpen = draw;
ws.onMessage = draw;

document.querySelectorAll("#options button").forEach(function (button) {
  button.addEventListener("click", function () {
    ws.publish({vote: button.dataset.vote});
  });
});
