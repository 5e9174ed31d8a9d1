// The emulator's web view: shows the screen, follows its changes through
// server-sent events, and sends button presses with the page's token.
"use strict";
(function () {
  const token = document.querySelector('meta[name="opencustody-token"]').content;
  const img = document.getElementById("screen");
  const text = document.getElementById("text");
  const status = document.getElementById("status");
  const buttons = document.querySelectorAll("#buttons button");

  function show(s) {
    img.src = "/screen.png?seq=" + s.seq;
    text.textContent = s.text;
    text.dataset.seq = String(s.seq);
    text.dataset.kind = s.kind;
    for (const b of buttons) {
      b.disabled = !(s.buttons || []).includes(b.dataset.button);
    }
  }

  for (const b of buttons) {
    b.addEventListener("click", async () => {
      status.textContent = "";
      const r = await fetch("/press", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-OpenCustody-Token": token },
        body: JSON.stringify({ button: b.dataset.button }),
      });
      if (!r.ok) {
        const e = await r.json().catch(() => ({ error: r.statusText }));
        status.textContent = e.error;
      }
    });
  }

  const events = new EventSource("/events");
  events.onmessage = (e) => show(JSON.parse(e.data));
  events.onerror = () => { status.textContent = "connection to the emulator lost; retrying"; };
  events.onopen = () => { status.textContent = ""; };
})();
