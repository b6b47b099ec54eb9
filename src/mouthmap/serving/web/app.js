// MouthMap browser client: camera frames as JPEG over a WebSocket, transcripts back.
// Query options: ?token=T (filled in), &autostart=1 (start at once), &seconds=S (stop after S s).
"use strict";
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const FPS = 25;
let ws = null, timer = null, sent = 0, stopTimer = null;

function status(text) { $("status").textContent = text; }
function showError(text) {
  const li = document.createElement("li");
  li.textContent = text;
  $("errors").appendChild(li);
}

async function start() {
  $("start").disabled = true;
  $("partial").textContent = ""; $("final").textContent = ""; $("errors").innerHTML = "";
  let media;
  try {
    media = await navigator.mediaDevices.getUserMedia({ video: { frameRate: FPS }, audio: false });
  } catch (e) {
    showError("camera: " + e.message); $("start").disabled = false; return;
  }
  const video = $("camera");
  video.srcObject = media;
  await new Promise((ok) => { if (video.readyState >= 2) ok(); else video.onloadeddata = ok; });
  const w = video.videoWidth, h = video.videoHeight;
  const canvas = document.createElement("canvas");
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws?token=` +
    encodeURIComponent($("token").value);
  ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  sent = 0;
  ws.onopen = () => ws.send(JSON.stringify({ type: "start", width: w, height: h, format: "jpeg", fps: FPS }));
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.type === "ready") {
      status(`streaming ${w}x${h}`);
      $("stop").disabled = false;
      timer = setInterval(() => {
        if (!ws || ws.readyState !== WebSocket.OPEN || ws.bufferedAmount > 4e6) return;
        ctx.drawImage(video, 0, 0, w, h);
        canvas.toBlob((b) => { if (b && ws && ws.readyState === WebSocket.OPEN) { ws.send(b); sent++; } },
                      "image/jpeg", 0.92);
      }, 1000 / FPS);
      const secs = parseFloat(params.get("seconds"));
      if (secs > 0) stopTimer = setTimeout(stop, secs * 1000);
    } else if (msg.type === "partial") {
      $("partial").textContent = msg.text || "…";
      status(`${msg.frames} frames`);
    } else if (msg.type === "final") {
      $("partial").textContent = "";
      $("final").textContent = msg.text;
      $("final").dataset.frames = msg.frames;
      status(`final transcript of ${msg.frames} frames (${msg.server_ms} ms on the server)`);
    } else if (msg.type === "error") {
      showError(`${msg.code}: ${msg.message}`);
    }
  };
  ws.onclose = (e) => {
    cleanup(media);
    if (e.code !== 1000) status(`closed (${e.code}${e.reason ? ": " + e.reason : ""})`);
    $("start").disabled = false; $("stop").disabled = true;
  };
}

function stop() {
  if (timer) { clearInterval(timer); timer = null; }
  if (stopTimer) { clearTimeout(stopTimer); stopTimer = null; }
  $("stop").disabled = true;
  // give the last toBlob callbacks a moment, then end the stream
  setTimeout(() => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "end" })); }, 150);
  status(`sent ${sent} frames; waiting for the final transcript`);
}

function cleanup(media) {
  if (timer) { clearInterval(timer); timer = null; }
  if (media) media.getTracks().forEach((t) => t.stop());
  ws = null;
}

$("token").value = params.get("token") || "";
$("start").onclick = start;
$("stop").onclick = stop;
if (params.get("autostart") === "1") start();
