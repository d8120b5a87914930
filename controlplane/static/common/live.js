// One reconnecting websocket per page: CP.live("/ws/jobs/", onMessage, statusElement).
// The status element reads "live" while connected and "reconnecting…" while not; on each
// (re)connect `onOpen(ws)` runs, so a page can ask for what it missed.
window.CP = window.CP || {};
CP.live = function (path, onMessage, statusEl, onOpen) {
  "use strict";
  let delay = 500, ws = null;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    ws = new WebSocket(scheme + location.host + path);
    ws.onopen = () => {
      if (statusEl) statusEl.textContent = "live";
      delay = 500;
      if (onOpen) onOpen(ws);
    };
    ws.onmessage = (event) => onMessage(JSON.parse(event.data), ws);
    ws.onclose = () => {
      if (statusEl) statusEl.textContent = "reconnecting…";
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 10000);
    };
  }
  connect();
  return {send: (msg) => ws && ws.readyState === 1 && ws.send(JSON.stringify(msg))};
};

// A progress bar's contents from {step, total}.
CP.setProgress = function (el, step, total) {
  if (!el || step === undefined || step === null) return;
  if (total) el.dataset.total = total;
  total = total || Number(el.dataset.total) || 0;
  el.dataset.step = step;
  el.textContent = "";
  if (total) {
    const bar = document.createElement("span"), fill = document.createElement("span");
    bar.className = "bar";
    fill.style.width = Math.min(100, Math.round(100 * step / total)) + "%";
    bar.append(fill); el.append(bar);
  }
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = "step " + step + (total ? " / " + total : "");
  el.append(text);
};
