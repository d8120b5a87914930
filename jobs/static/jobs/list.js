// The jobs list, live: /ws/jobs/ sends every state change and progress report of the
// jobs in the user's projects. A changed job's row is fetched again from the server
// (rendered as the list renders it, with the list's own filters: 204 when it no longer
// matches); a new job is put on top of the first page. Progress updates the bar in place.
(function () {
  "use strict";
  const tbody = document.querySelector("#jobs tbody");
  const insert = JSON.parse(document.getElementById("live-inserts").textContent);
  const pending = new Map();  // job id -> timer (one fetch per burst of events)

  function count(delta) {  // "N in all" under the list follows inserts and removals
    document.querySelectorAll(".total-count").forEach((el) => {
      el.textContent = Math.max(0, Number(el.textContent) + delta);
    });
  }

  function row(id) { return tbody.querySelector('tr[data-job="' + id + '"]'); }

  function refresh(id) {
    if (pending.has(id)) return;
    pending.set(id, setTimeout(async () => {
      pending.delete(id);
      const response = await fetch("/jobs/" + id + "/row/" + location.search, {credentials: "same-origin"});
      const old = row(id);
      if (response.status === 204) { if (old) { old.remove(); count(-1); } return; }
      if (!response.ok) return;
      const holder = document.createElement("tbody");
      holder.innerHTML = (await response.text()).trim();
      const fresh = holder.firstElementChild;
      if (!fresh) return;
      const box = old && old.querySelector("input[type=checkbox]");
      if (box && box.checked) fresh.querySelector("input[type=checkbox]").checked = true;
      if (old) old.replaceWith(fresh);
      else if (insert) { tbody.querySelector("tr.empty")?.remove(); tbody.prepend(fresh); count(1); }
    }, 150));
  }

  function onMessage(msg) {
    if (msg.type === "state") {
      const old = row(msg.job);
      if (old || insert) refresh(msg.job);
    } else if (msg.type === "progress") {
      const old = row(msg.job);
      if (old) CP.setProgress(old.querySelector(".progress"), msg.step, msg.total);
    }
  }

  const compare = document.getElementById("compare");
  document.addEventListener("change", (event) => {
    if (!event.target.matches('input[name="ids"]')) return;
    const n = document.querySelectorAll('input[name="ids"]:checked').length;
    compare.disabled = n < 2 || n > 8;
  });
  let opened = false;
  CP.live("/ws/jobs/", onMessage, document.getElementById("conn"), () => {
    // After a reconnect, what changed meanwhile: every row on the page again.
    if (opened) tbody.querySelectorAll("tr[data-job]").forEach((tr) => refresh(tr.dataset.job));
    opened = true;
  });
})();
