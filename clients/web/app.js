// The listener page: WebSocket → decoder (WebCodecs Opus, or PCM) → AudioWorklet jitter buffer.
// Protocol (see README): a JSON `hello`, then binary audio messages with a 16-byte header
// (version u8, codec u8, reserved u16, sequence u32, program sample index i64), and JSON `status`.

import { setupSteering } from './steer.js';

const HEADER_BYTES = 16;
const TARGET_SECONDS = 0.4;
const $ = (id) => document.getElementById(id);

const radio = {
  ws: null, hello: null, ctx: null, node: null, gain: null, analyser: null, decoder: null,
  playing: false, retries: 0, lastSeq: null, stats: { played: 0, audible: 0, peak: 0, underruns: 0 },
  packets: 0, status: null,
};
window.radio = radio; // figures for tests and curious listeners

async function opusSupported() {
  if (!('AudioDecoder' in window)) return false;
  try {
    const r = await AudioDecoder.isConfigSupported({ codec: 'opus', sampleRate: 48000, numberOfChannels: 2 });
    return r.supported;
  } catch { return false; }
}

function setState(cls, text) {
  const el = $('connection');
  el.className = `state ${cls}`;
  el.textContent = text;
}

async function connect() {
  const forced = new URLSearchParams(location.search).get('codec');
  const codec = forced || ((await opusSupported()) ? 'opus' : 'pcm');
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  // Beside the page: /ws for the station at /, /s/NAME/ws for a station of a lineup.
  const url = new URL(`ws?codec=${codec}`, location.href);
  url.protocol = `${scheme}:`;
  const ws = new WebSocket(url);  // commands carry the token
  ws.binaryType = 'arraybuffer';
  radio.ws = ws;
  setState('connecting', 'connecting…');
  ws.onmessage = (event) => {
    if (typeof event.data === 'string') onJson(JSON.parse(event.data));
    else onAudio(event.data);
  };
  ws.onclose = (event) => {
    radio.ws = null;
    closeDecoder();
    const delay = Math.min(15, 2 ** radio.retries++);
    const why = event.reason ? ` (${event.reason})` : '';
    setState('gone', 'station unreachable');
    $('message').textContent = `The station is gone${why}; reconnecting in ${delay} s…`;
    setTimeout(connect, delay * 1000);
  };
}

function onJson(msg) {
  if (msg.type === 'hello') {
    radio.hello = msg;
    radio.retries = 0;
    radio.lastSeq = null;
    setState('live', 'live');
    $('message').textContent = radio.playing ? '' : 'Press play to listen.';
    $('prompt').textContent = msg.station.prompt;
    $('model').textContent = `${msg.station.model} · seed ${msg.station.seed}`;
    $('codec').textContent = `${msg.codec} · ${msg.sample_rate / 1000} kHz · ${msg.channels === 2 ? 'stereo' : 'mono'}`;
    if (radio.playing) startAudio().catch(showError);
  } else if (msg.type === 'result' || msg.type === 'error') {
    if (radio.onControl) radio.onControl(msg);
  } else if (msg.type === 'status') {
    radio.status = msg;
    $('prompt').textContent = msg.prompt;
    $('strides').textContent = String(msg.strides);
    $('errors').textContent = msg.failing_seconds > 0
      ? `${msg.generation_errors} (retrying for ${msg.failing_seconds.toFixed(0)} s)` : String(msg.generation_errors);
    $('latency').textContent = msg.last_change_latency_seconds == null ? '—' : `${msg.last_change_latency_seconds.toFixed(2)} s`;
    if (radio.onStatus) radio.onStatus(msg);
    $('buffered').textContent = `${msg.buffered_seconds.toFixed(1)} s`;
    $('rtf').textContent = msg.real_time_factor == null ? '—' : `${msg.real_time_factor.toFixed(2)}×`;
    $('listeners').textContent = String(msg.listeners_total);
    $('underruns').textContent = `${radio.stats.underruns} / ${msg.underruns}`;
  }
}

function onAudio(buffer) {
  const view = new DataView(buffer);
  const seq = view.getUint32(4, true);
  const streamSample = Number(view.getBigInt64(8, true));
  radio.packets++;
  radio.lastSeq = seq;
  if (!radio.playing || !radio.node) return;
  const payload = new Uint8Array(buffer, HEADER_BYTES);
  if (radio.hello.codec === 'opus') {
    if (!radio.decoder || radio.decoder.state !== 'configured') return;
    const usPerSample = 1e6 / radio.hello.stream_sample_rate;
    radio.decoder.decode(new EncodedAudioChunk({ type: 'key', timestamp: streamSample * usPerSample, data: payload }));
  } else {
    const channels = radio.hello.channels;
    const samples = new Int16Array(buffer.slice(HEADER_BYTES));
    const frames = samples.length / channels;
    const planes = Array.from({ length: channels }, () => new Float32Array(frames));
    for (let i = 0; i < frames; i++) {
      for (let c = 0; c < channels; c++) planes[c][i] = samples[i * channels + c] / 32768;
    }
    radio.node.port.postMessage({ type: 'audio', channels: planes }, planes.map((p) => p.buffer));
  }
}

function openDecoder() {
  closeDecoder();
  const h = radio.hello;
  const head = Uint8Array.from(atob(h.opus_head), (ch) => ch.charCodeAt(0));
  radio.decoder = new AudioDecoder({
    output: (data) => {
      const planes = [];
      for (let c = 0; c < data.numberOfChannels; c++) {
        const plane = new Float32Array(data.numberOfFrames);
        data.copyTo(plane, { planeIndex: c, format: 'f32-planar' });
        planes.push(plane);
      }
      data.close();
      if (radio.node) radio.node.port.postMessage({ type: 'audio', channels: planes }, planes.map((p) => p.buffer));
    },
    error: (err) => showError(err),
  });
  radio.decoder.configure({ codec: 'opus', sampleRate: h.sample_rate, numberOfChannels: h.channels, description: head });
}

function closeDecoder() {
  if (radio.decoder && radio.decoder.state !== 'closed') radio.decoder.close();
  radio.decoder = null;
}

async function startAudio() {
  const h = radio.hello;
  if (!h) return;
  if (radio.ctx && radio.ctx.sampleRate !== h.sample_rate) { await radio.ctx.close(); radio.ctx = null; }
  if (!radio.ctx) {
    radio.ctx = new AudioContext({ sampleRate: h.sample_rate, latencyHint: 'playback' });
    await radio.ctx.audioWorklet.addModule('/web/worklet.js');
    radio.node = new AudioWorkletNode(radio.ctx, 'jitter-buffer', {
      numberOfInputs: 0, outputChannelCount: [h.channels],
      processorOptions: { channels: h.channels, targetSeconds: TARGET_SECONDS, maxSeconds: 4 },
    });
    radio.node.port.onmessage = (event) => { radio.stats = event.data; };
    radio.gain = new GainNode(radio.ctx, { gain: Number($('volume').value) });
    radio.analyser = new AnalyserNode(radio.ctx, { fftSize: 1024 });
    radio.node.connect(radio.gain).connect(radio.analyser).connect(radio.ctx.destination);
  }
  radio.node.port.postMessage({ type: 'reset' }); // start from the live point
  if (h.codec === 'opus') openDecoder();
  await radio.ctx.resume();
  $('jitter').textContent = `${TARGET_SECONDS.toFixed(1)} s`;
}

async function togglePlay() {
  radio.playing = !radio.playing;
  const button = $('play');
  button.textContent = radio.playing ? '❚❚ Pause' : '▶ Play';
  button.setAttribute('aria-pressed', String(radio.playing));
  if (radio.playing) {
    $('message').textContent = '';
    await startAudio().catch(showError);
  } else {
    closeDecoder();
    if (radio.ctx) await radio.ctx.suspend();
  }
}

function showError(err) {
  $('message').textContent = `Audio problem: ${err && err.message ? err.message : err}`;
}

function draw() {
  const canvas = $('meter');
  const g = canvas.getContext('2d');
  const w = canvas.width;
  const h = canvas.height;
  g.clearRect(0, 0, w, h);
  if (radio.analyser) {
    const bins = new Uint8Array(radio.analyser.frequencyBinCount);
    radio.analyser.getByteFrequencyData(bins);
    const bars = 64;
    const per = Math.floor(bins.length / bars);
    for (let i = 0; i < bars; i++) {
      let v = 0;
      for (let j = 0; j < per; j++) v = Math.max(v, bins[i * per + j]);
      const bh = (v / 255) * (h - 14);
      g.fillStyle = '#f5a25d';
      g.fillRect(i * (w / bars) + 1, h - 14 - bh, w / bars - 2, bh);
    }
  }
  const peak = Math.min(1, radio.stats.peak || 0);
  g.fillStyle = peak > 0.9 ? '#ff6b6b' : '#7bd88f';
  g.fillRect(0, h - 8, w * peak, 8);
  if (radio.stats.buffered !== undefined && radio.playing) {
    $('jitter').textContent = `${radio.stats.buffered.toFixed(2)} s (${radio.stats.target.toFixed(1)} s)`;
  }
  requestAnimationFrame(draw);
}

$('play').addEventListener('click', () => togglePlay());
$('volume').addEventListener('input', (e) => {
  if (radio.gain) radio.gain.gain.setTargetAtTime(Number(e.target.value), radio.ctx.currentTime, 0.02);
});
requestAnimationFrame(draw);
setupSteering(radio);
connect();
