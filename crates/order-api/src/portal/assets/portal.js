// The orderbridge portal: watch one order over GET /v1/orders/{id}/events.
//
// The event stream needs `Authorization: Bearer <key>`, which EventSource cannot send, so the
// stream is read with fetch() and its frames parsed here (the key never goes into a URL). Every
// value from the server is written with textContent, never as HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const RECONNECT_MS = 2000;
  // The order's way through the system, in order; provisioning_failed ends it.
  const STEPS = ["submitted", "synced", "activated", "provisioning", "provisioned"];

  let watching = null; // { controller, orderId, lastEventId }

  function showError(text) {
    const box = $("error");
    box.textContent = text;
    box.hidden = !text;
  }

  function setConnection(state, text) {
    const p = $("connection");
    p.dataset.state = state;
    p.textContent = text;
  }

  // A problem+json answer's detail, readably; anything else as its status line.
  async function describeFailure(response) {
    let text = `${response.status} ${response.statusText}`.trim();
    try {
      const type = response.headers.get("content-type") || "";
      if (type.includes("json")) {
        const problem = await response.json();
        text = `${problem.title || text} (${response.status})`;
        if (problem.detail) text += `: ${problem.detail}`;
        for (const e of problem.errors || []) {
          text += `\n  ${e.pointer || ""}: ${e.detail || e.code || ""}`;
        }
      }
    } catch (_) {
      // Keep the status line.
    }
    return text;
  }

  function authHeaders() {
    return { Authorization: `Bearer ${$("api-key").value.trim()}` };
  }

  function randomKey() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function createDemoOrder() {
    showError("");
    if (!$("api-key").value.trim()) {
      showError("Paste an API key first.");
      return;
    }
    const ref = `DEMO-${randomKey().slice(0, 8)}`;
    const order = {
      client_ref: ref,
      customer: { external_id: "DEMO-CUSTOMER", name: "Demo Customer", email: "demo@example.com" },
      shipping_address: { line1: "1 Demo Street", city: "Berlin", postal_code: "10115", country: "DE" },
      currency: "EUR",
      lines: [
        { sku: "SKU-DEMO-1", name: "Demo widget", quantity: 2, unit_price: "12.50" },
        { sku: "SKU-DEMO-2", name: "Demo service", quantity: 1, unit_price: "30.00" },
      ],
    };
    let response;
    try {
      response = await fetch("/v1/orders", {
        method: "POST",
        headers: {
          ...authHeaders(),
          "Content-Type": "application/json",
          "Idempotency-Key": randomKey(),
        },
        body: JSON.stringify(order),
      });
    } catch (e) {
      showError(`Cannot reach the API: ${e.message}`);
      return;
    }
    if (response.status !== 201) {
      showError(`Creating the demo order failed: ${await describeFailure(response)}`);
      return;
    }
    const created = await response.json();
    $("order-id").value = created.id;
    watch(created.id);
  }

  function stop() {
    if (watching) watching.controller.abort();
    watching = null;
    $("stop").disabled = true;
    setConnection("idle", "Not watching.");
  }

  function watch(orderId) {
    stop();
    showError("");
    orderId = orderId.trim();
    if (!orderId) {
      showError("Enter an order id, or create a demo order.");
      return;
    }
    if (!$("api-key").value.trim()) {
      showError("Paste an API key first.");
      return;
    }
    watching = { controller: new AbortController(), orderId, lastEventId: null };
    $("stop").disabled = false;
    stream(watching);
  }

  // One connection of the stream; reconnects with Last-Event-ID when it ends.
  async function stream(w) {
    setConnection("connecting", "Connecting…");
    const headers = { ...authHeaders(), Accept: "text/event-stream" };
    if (w.lastEventId !== null) headers["Last-Event-ID"] = w.lastEventId;
    let response;
    try {
      response = await fetch(`/v1/orders/${encodeURIComponent(w.orderId)}/events`, {
        headers,
        signal: w.controller.signal,
        cache: "no-store",
      });
    } catch (e) {
      if (w.controller.signal.aborted) return;
      return retry(w, `Connection failed (${e.message}).`);
    }
    if (!response.ok) {
      const text = await describeFailure(response);
      if (response.status === 503 || response.status === 429) {
        return retry(w, text);
      }
      // 401, 404…: retrying would not help.
      showError(text);
      if (watching === w) stop();
      return;
    }
    setConnection("live", `Live: watching order ${w.orderId}.`);
    try {
      await readEvents(response.body, (event) => {
        if (event.id !== null) w.lastEventId = event.id;
        if (event.type === "order") render(JSON.parse(event.data));
      });
    } catch (e) {
      if (w.controller.signal.aborted) return;
      return retry(w, `The stream broke (${e.message}).`);
    }
    if (!w.controller.signal.aborted) retry(w, "The stream ended.");
  }

  function retry(w, why) {
    if (watching !== w) return;
    setConnection("reconnecting", `${why} Reconnecting…`);
    setTimeout(() => {
      if (watching === w) stream(w);
    }, RECONNECT_MS);
  }

  // Server-sent events (the WHATWG framing): lines end with CR, LF or CRLF; a blank line ends
  // an event; `:` starts a comment (the heartbeats).
  async function readEvents(body, onEvent) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let event = { type: "message", data: [], id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let match;
      // A trailing lone CR may be the first half of a CRLF: wait for more.
      while ((match = /\r\n|\r(?!$)|\n/.exec(buffer)) !== null) {
        const line = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        if (line === "") {
          if (event.data.length > 0) {
            onEvent({ type: event.type, data: event.data.join("\n"), id: event.id });
          }
          event = { type: "message", data: [], id: event.id };
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event.type = value;
        else if (field === "data") event.data.push(value);
        else if (field === "id") event.id = value;
      }
    }
  }

  function text(id, value) {
    $(id).textContent = value === null || value === undefined || value === "" ? "—" : String(value);
  }

  function render(order) {
    $("order").hidden = false;
    text("order-ref", `${order.id} (${order.client_ref})`);
    const status = $("status");
    status.textContent = order.status;
    status.classList.toggle("failed", /failed/.test(order.status));
    text("version", order.version);

    const sync = order.sync || {};
    text("sync-state", sync.state);
    text("sync-salesforce-id", sync.salesforce_id);
    text("sync-attempts", sync.attempts);
    text("sync-error", sync.last_error);
    $("sync-error").classList.toggle("error", !!sync.last_error);

    // Provisioning: the latest fulfilment request, once one was asked for.
    const f = order.fulfilment || {};
    text("fulfilment-state", f.state);
    text("fulfilment-attempts", f.attempts);
    text("fulfilment-written", f.state ? (f.written_back ? "yes" : "not yet") : "");
    text("fulfilment-reason", f.reason);
    $("fulfilment-reason").classList.toggle("error", !!f.reason);

    // Steps: every one reached so far is done, the latest current.
    const history = order.status_history || [];
    const reached = new Set(history.map((h) => h.status));
    if (sync.state === "synced") reached.add("synced");
    let current = -1;
    STEPS.forEach((step, i) => {
      if (reached.has(step)) current = i;
    });
    const failed = order.status === "provisioning_failed";
    for (const li of $("steps").children) {
      const i = STEPS.indexOf(li.dataset.step);
      li.className = "";
      if (i < current) li.classList.add("done");
      if (i === current) li.classList.add(failed ? "done" : "current");
      if (failed && li.dataset.step === "provisioned") {
        li.classList.add("failed");
        li.textContent = "provisioning failed";
      } else {
        li.textContent = li.dataset.step;
      }
    }

    const body = $("history");
    body.replaceChildren(
      ...history.map((h) => {
        const tr = document.createElement("tr");
        tr.dataset.status = h.status;
        for (const value of [h.status, new Date(h.at).toLocaleString(), h.source]) {
          const td = document.createElement("td");
          td.textContent = value;
          tr.appendChild(td);
        }
        return tr;
      }),
    );
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("watch-form").addEventListener("submit", (e) => {
      e.preventDefault();
      watch($("order-id").value);
    });
    $("create-demo").addEventListener("click", () => createDemoOrder());
    $("stop").addEventListener("click", () => stop());
  });
})();
