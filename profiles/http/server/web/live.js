// The live view of a remote session: its page's screencast on a <canvas>, and the person's
// clicks and keys sent back to it, over CDP.
//
// A page cannot set Authorization on a WebSocket, and the key must not go in a URL. So the
// page trades its key for a single-use ticket (POST /v1/sessions/{id}/live-ticket, with the
// key) and offers it as a WebSocket subprotocol ("ticket.<ticket>") to
// /v1/sessions/{id}/live, which relays CDP to the session's browser as connect_url does.
// Then: Target.attachToTarget (flatten) to a page, Page.startScreencast (JPEG frames, each
// acknowledged with Page.screencastFrameAck), Input.dispatchMouseEvent / dispatchKeyEvent /
// insertText for what the person does on the canvas, scaled to the page's viewport.

import { ApiError, api, seg } from "./api.js";

const BUTTONS = ["left", "middle", "right", "back", "forward"];

function modifiers(e) {
  return (e.altKey ? 1 : 0) | (e.ctrlKey ? 2 : 0) | (e.metaKey ? 4 : 0) | (e.shiftKey ? 8 : 0);
}

function decode(base64) {
  const binary = atob(base64);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) out[i] = binary.charCodeAt(i);
  return out;
}

export class LiveView {
  // onStatus(text): what the view is doing, in words; onTargets(pages, currentId): the
  // session's pages (tabs) changed; onClose(text): the connection ended.
  constructor(canvas, { onStatus = () => {}, onTargets = () => {}, onClose = () => {} } = {}) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.onStatus = onStatus;
    this.onTargets = onTargets;
    this.onClose = onClose;
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map();
    this.session = null; // the CDP session of the page shown
    this.targetId = null;
    this.targets = new Map(); // targetId -> targetInfo, pages only
    this.metadata = null; // the last frame's: deviceWidth, deviceHeight (CSS pixels)
    this.frames = 0;
    this.latest = null;
    this.painting = false;
    this.moveQueued = null;
    this.closed = false;
    this.listen();
  }

  // ------------------------------------------------------------------ the connection

  async open(sessionId) {
    this.onStatus("Connecting…");
    const grant = await api(`/sessions/${seg(sessionId)}/live-ticket`, { method: "POST" });
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}/v1/sessions/${seg(sessionId)}/live`;
    const ws = new WebSocket(url, [grant.protocol, `ticket.${grant.ticket}`]);
    this.ws = ws;
    await new Promise((resolve, reject) => {
      ws.addEventListener("open", resolve, { once: true });
      ws.addEventListener(
        "error",
        () =>
          reject(
            new ApiError(
              0,
              "LiveViewRefused",
              "The live view's connection was refused or lost (has the session ended?).",
            ),
          ),
        { once: true },
      );
    });
    ws.addEventListener("message", (event) => this.receive(event.data));
    ws.addEventListener("close", (event) => this.ended(event));
    if (this.closed) {
      ws.close(1000);
      return;
    }
    await this.send("Target.setDiscoverTargets", { discover: true });
    await this.attach(null);
  }

  close() {
    this.closed = true;
    document.removeEventListener("paste", this.pasted);
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, "closed by the page");
  }

  ended(event) {
    for (const { reject, method } of this.pending.values()) {
      reject(new ApiError(0, "LiveViewClosed", `The live view closed before ${method} answered.`));
    }
    this.pending.clear();
    this.session = null;
    const why = event.code === 1000 || event.code === 1005 ? "" : ` (code ${event.code})`;
    this.onClose(this.closed ? "Live view closed." : `The live view's connection ended${why}.`);
  }

  send(method, params = {}, sessionId = undefined) {
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
        reject(new ApiError(0, "LiveViewClosed", "The live view is not connected."));
        return;
      }
      const id = this.nextId;
      this.nextId += 1;
      this.pending.set(id, { resolve, reject, method });
      const message = { id, method, params };
      if (sessionId) message.sessionId = sessionId;
      this.ws.send(JSON.stringify(message));
    });
  }

  receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (message.id !== undefined) {
      const waiting = this.pending.get(message.id);
      if (!waiting) return;
      this.pending.delete(message.id);
      if (message.error) {
        waiting.reject(
          new ApiError(0, "CdpError", `${waiting.method}: ${message.error.message}`, message.error),
        );
      } else {
        waiting.resolve(message.result || {});
      }
      return;
    }
    const params = message.params || {};
    switch (message.method) {
      case "Page.screencastFrame":
        if (message.sessionId === this.session) this.frame(params);
        break;
      case "Target.targetCreated":
      case "Target.targetInfoChanged":
        if (params.targetInfo && params.targetInfo.type === "page") {
          this.targets.set(params.targetInfo.targetId, params.targetInfo);
          this.announce();
        }
        break;
      case "Target.targetDestroyed":
        if (this.targets.delete(params.targetId)) this.announce();
        if (params.targetId === this.targetId) this.lost();
        break;
      case "Target.detachedFromTarget":
        if (params.sessionId === this.session) this.lost();
        break;
      default:
        break;
    }
  }

  // The page shown went away (closed by a client): show another one, if there is one.
  lost() {
    this.session = null;
    this.targetId = null;
    const next = this.targets.keys().next();
    if (next.done) {
      this.onStatus("The session has no page open.");
      return;
    }
    this.attach(next.value).catch((err) => this.onStatus(err.message));
  }

  announce() {
    this.onTargets([...this.targets.values()], this.targetId);
  }

  // Show the page targetId (null: the first page, or a new one when there is none).
  async attach(targetId) {
    if (!targetId) {
      const { targetInfos } = await this.send("Target.getTargets");
      for (const info of targetInfos || []) {
        if (info.type === "page") this.targets.set(info.targetId, info);
      }
      const first = this.targets.keys().next();
      if (first.done) {
        const created = await this.send("Target.createTarget", { url: "about:blank" });
        targetId = created.targetId;
      } else {
        targetId = first.value;
      }
    }
    const previous = this.session;
    this.session = null;
    if (previous) {
      await this.send("Target.detachFromTarget", { sessionId: previous }).catch(() => {});
    }
    const { sessionId } = await this.send("Target.attachToTarget", { targetId, flatten: true });
    this.session = sessionId;
    this.targetId = targetId;
    this.metadata = null;
    await this.send("Page.enable", {}, sessionId);
    await this.send(
      "Page.startScreencast",
      { format: "jpeg", quality: 80, maxWidth: 1920, maxHeight: 1920, everyNthFrame: 1 },
      sessionId,
    );
    const info = this.targets.get(targetId);
    this.onStatus(`Live: ${info ? info.title || info.url : "the session's page"}.`);
    this.announce();
  }

  // ------------------------------------------------------------------ frames

  frame(params) {
    // Acknowledged at once (the browser sends the next frame only then); painted when the
    // canvas is free, the newest frame only.
    this.send("Page.screencastFrameAck", { sessionId: params.sessionId }, this.session).catch(
      () => {},
    );
    this.metadata = params.metadata;
    this.latest = params.data;
    if (!this.painting) this.paint();
  }

  async paint() {
    this.painting = true;
    try {
      while (this.latest) {
        const data = this.latest;
        this.latest = null;
        let bitmap;
        try {
          bitmap = await createImageBitmap(new Blob([decode(data)], { type: "image/jpeg" }));
        } catch {
          continue;
        }
        if (this.canvas.width !== bitmap.width) this.canvas.width = bitmap.width;
        if (this.canvas.height !== bitmap.height) this.canvas.height = bitmap.height;
        this.context.drawImage(bitmap, 0, 0);
        bitmap.close();
        this.frames += 1;
        this.canvas.dataset.frames = String(this.frames);
        this.canvas.classList.add("painted");
      }
    } finally {
      this.painting = false;
    }
  }

  // ------------------------------------------------------------------ input

  listen() {
    const canvas = this.canvas;
    canvas.addEventListener("mousedown", (e) => {
      e.preventDefault();
      this.mouse("mousePressed", e); // before focusing, which could scroll the canvas
      canvas.focus({ preventScroll: true });
    });
    canvas.addEventListener("mouseup", (e) => this.mouse("mouseReleased", e));
    canvas.addEventListener("mousemove", (e) => {
      // One move per animation frame at most.
      const queued = this.moveQueued;
      this.moveQueued = e;
      if (!queued) {
        requestAnimationFrame(() => {
          const last = this.moveQueued;
          this.moveQueued = null;
          if (last) this.mouse("mouseMoved", last);
        });
      }
    });
    canvas.addEventListener(
      "wheel",
      (e) => {
        e.preventDefault();
        const { x, y } = this.point(e);
        this.input("Input.dispatchMouseEvent", {
          type: "mouseWheel",
          x,
          y,
          deltaX: e.deltaX,
          deltaY: e.deltaY,
          modifiers: modifiers(e),
        });
      },
      { passive: false },
    );
    canvas.addEventListener("contextmenu", (e) => e.preventDefault());
    canvas.addEventListener("keydown", (e) => this.key(e, true));
    canvas.addEventListener("keyup", (e) => this.key(e, false));
    this.pasted = (e) => {
      if (document.activeElement !== canvas) return;
      const text = e.clipboardData ? e.clipboardData.getData("text/plain") : "";
      if (text) {
        e.preventDefault();
        this.input("Input.insertText", { text });
      }
    };
    document.addEventListener("paste", this.pasted);
  }

  // The event's place on the remote page, in its CSS pixels.
  point(e) {
    const rect = this.canvas.getBoundingClientRect();
    const width = this.metadata ? this.metadata.deviceWidth : this.canvas.width;
    const height = this.metadata ? this.metadata.deviceHeight : this.canvas.height;
    const x = ((e.clientX - rect.left) / Math.max(1, rect.width)) * width;
    const y = ((e.clientY - rect.top) / Math.max(1, rect.height)) * height;
    return { x: Math.round(x * 100) / 100, y: Math.round(y * 100) / 100 };
  }

  mouse(type, e) {
    const { x, y } = this.point(e);
    const moved = type === "mouseMoved";
    this.input("Input.dispatchMouseEvent", {
      type,
      x,
      y,
      modifiers: modifiers(e),
      button: moved ? (e.buttons & 1 ? "left" : "none") : BUTTONS[e.button] || "none",
      buttons: e.buttons,
      clickCount: moved ? 0 : Math.max(1, e.detail || 1),
    });
  }

  key(e, down) {
    if (e.isComposing) return;
    // Tab moves the focus on this page (no keyboard trap); "Send Tab" sends one.
    if (e.key === "Tab" && !e.ctrlKey && !e.altKey && !e.metaKey) return;
    // Paste: the paste event brings the text (the remote browser has its own clipboard).
    if ((e.ctrlKey || e.metaKey) && (e.key === "v" || e.key === "V")) return;
    e.preventDefault();
    this.sendKey(e, down);
  }

  sendKey(e, down) {
    const printable = e.key.length === 1 && !e.ctrlKey && !e.metaKey && !e.altKey;
    const text = printable ? e.key : e.key === "Enter" ? "\r" : undefined;
    const params = {
      type: down ? (text ? "keyDown" : "rawKeyDown") : "keyUp",
      modifiers: modifiers(e),
      key: e.key,
      code: e.code,
      windowsVirtualKeyCode: e.keyCode,
      nativeVirtualKeyCode: e.keyCode,
      autoRepeat: Boolean(e.repeat),
      location: e.location || 0,
      isKeypad: e.location === 3,
    };
    if (down && text) {
      params.text = text;
      params.unmodifiedText = text;
    }
    this.input("Input.dispatchKeyEvent", params);
  }

  // A Tab (Shift+Tab with shift) pressed on the remote page.
  sendTab(shift = false) {
    const e = { key: "Tab", code: "Tab", keyCode: 9, shiftKey: shift, location: 0 };
    this.sendKey(e, true);
    this.sendKey(e, false);
  }

  input(method, params) {
    if (!this.session) return;
    this.send(method, params, this.session).catch(() => {});
  }
}
