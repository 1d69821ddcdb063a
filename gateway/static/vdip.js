/* vdip.js: send events from a web page to the Versatile Data Ingestion Platform.
 *
 *   <script src="https://GATEWAY/static/vdip.js"></script>
 *   <script>
 *     const vdip = VDIP.init({url: "https://GATEWAY/api/ingest/APP_ID", key: "INGEST_ONLY_KEY"});
 *     vdip.track("page_view", {path: location.pathname});
 *   </script>
 *
 * The page's origin must be one of the application's allowed origins, and the key should have the
 * ingest scope only (anyone can read it in the page). Events get a UUIDv7 here and are sent in
 * batches (batchSize events, or flushIntervalMs after the first); a batch that gets no answer,
 * 429 or 5xx is sent again with the same ids after Retry-After (or a jittered backoff), so the
 * platform keeps each event once. When the page is hidden or closed, everything not yet
 * acknowledged (the batch in flight too: same ids) goes with navigator.sendBeacon to
 * {url}/beacon. 4xx refusals are final: they go to onError(status, body, events).
 */
(function () {
  "use strict";

  function uuid7() {
    const b = crypto.getRandomValues(new Uint8Array(16));
    let ms = Date.now();
    for (let i = 5; i >= 0; i--) { b[i] = ms % 256; ms = Math.floor(ms / 256); }
    b[6] = (b[6] & 0x0f) | 0x70;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function init(options) {
    const url = options.url.replace(/\/+$/, "");
    const key = options.key;
    const batchSize = Math.min(options.batchSize || 20, 500);
    const flushIntervalMs = options.flushIntervalMs ?? 1000;
    const maxQueue = options.maxQueue || 1000; // beyond: the oldest are dropped
    const onError = options.onError || ((status, body) => console.warn("vdip:", status, body));
    let queue = [];
    let inflight = [];
    let timer = null;
    let attempt = 0;
    let waitUntil = 0;

    function schedule(ms) {
      if (timer === null) timer = setTimeout(() => { timer = null; send(); }, ms);
    }

    function track(eventType, payload) {
      const event = {event_id: uuid7(), event_type: eventType, payload: payload || {},
                     occurred_at: new Date().toISOString()};
      queue.push(event);
      if (queue.length > maxQueue) queue.shift();
      if (queue.length >= batchSize) send(); else schedule(flushIntervalMs);
      return event.event_id;
    }

    function retryLater(events, retryAfter) {
      queue = events.concat(queue);
      attempt += 1;
      const backoff = Math.random() * Math.min(30000, 200 * 2 ** attempt);
      const ms = retryAfter !== null ? retryAfter * 1000 + Math.random() * 500 : backoff;
      waitUntil = Date.now() + ms;
      schedule(ms);
    }

    async function send() {
      if (inflight.length || !queue.length) return;
      if (Date.now() < waitUntil) { schedule(waitUntil - Date.now()); return; }
      inflight = queue.splice(0, batchSize);
      const events = inflight;
      let response;
      try {
        response = await fetch(`${url}/batch`, {
          method: "POST",
          headers: {"Content-Type": "application/json", "X-API-Key": key},
          body: JSON.stringify({events}),
        });
      } catch (error) { // no answer: maybe accepted, the same ids again are safe
        inflight = [];
        retryLater(events, null);
        return;
      }
      inflight = [];
      const status = response.status;
      if (status === 429 || status >= 500) {
        const given = parseFloat(response.headers.get("Retry-After"));
        retryLater(events, Number.isFinite(given) ? given : null);
        return;
      }
      attempt = 0;
      if (status !== 202) {
        const body = await response.json().catch(() => null);
        if (status === 207 && body) {
          const again = [];
          for (const r of body.data.results) {
            if (r.status === "rejected" && r.errors.some((e) => e.field === "kafka")) again.push(events[r.index]);
          }
          if (again.length) retryLater(again, null);
          if (again.length === body.data.rejected) { if (queue.length) schedule(0); return; }
        }
        onError(status, body, events);
      }
      if (queue.length) schedule(queue.length >= batchSize ? 0 : flushIntervalMs);
    }

    function beacon() { // the page goes away: send everything not acknowledged, in one or more beacons
      const events = inflight.concat(queue);
      queue = [];
      for (let i = 0; i < events.length; i += batchSize) {
        const body = JSON.stringify({key, events: events.slice(i, i + batchSize)});
        if (!navigator.sendBeacon(`${url}/beacon`, new Blob([body], {type: "text/plain"}))) {
          queue = queue.concat(events.slice(i)); // refused (over the beacon quota): kept, if the page comes back
          break;
        }
      }
    }

    addEventListener("pagehide", beacon);
    addEventListener("visibilitychange", () => { if (document.visibilityState === "hidden") beacon(); });

    return {track, flush: send, pending: () => queue.length + inflight.length};
  }

  window.VDIP = {init, uuid7};
})();
