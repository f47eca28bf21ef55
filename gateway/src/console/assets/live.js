// rxgate console: applies the live updates of /events to the fridges table. The page works
// without this script (it then shows the state at load time).
"use strict";
(function () {
  const table = document.getElementById("fridges");
  if (!table || !window.EventSource) {
    return;
  }
  const source = new EventSource("/events");
  source.addEventListener("fridges", function (message) {
    const update = JSON.parse(message.data);
    for (const fridge of update.fridges) {
      const row = document.getElementById("fridge-" + fridge.device);
      if (!row) {
        continue;
      }
      row.className = fridge.class;
      for (const field of ["temperature", "state", "age"]) {
        const cell = row.querySelector("td." + field);
        if (cell && cell.textContent !== fridge[field]) {
          cell.textContent = fridge[field];
        }
      }
    }
    const alerts = document.getElementById("open-alerts");
    if (alerts) {
      alerts.textContent = update.open_alerts + " open alert(s)";
    }
    const stamp = document.getElementById("live");
    if (stamp) {
      stamp.textContent = "Live: updated " + new Date().toLocaleTimeString();
    }
  });
  // The session ended (the stream closes and cannot reopen): stop trying, say so.
  source.addEventListener("error", function () {
    if (source.readyState === EventSource.CLOSED) {
      const stamp = document.getElementById("live");
      if (stamp) {
        stamp.textContent = "Live updates stopped: reload the page.";
      }
    }
  });
})();
