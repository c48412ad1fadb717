// The jitter buffer and the audio callback of the listener page.
//
// Decoded samples arrive from the main thread (port messages of planar Float32Arrays) and are
// appended to a ring per channel. process() plays from the ring once `targetSeconds` are
// buffered; when the ring runs dry it fades out and plays silence (never repeats), and fades back
// in once the target is reached again. If the buffer grows beyond `maxSeconds` (the tab was
// throttled) it skips ahead to the target, so the listener stays near the live point.

const FADE_SECONDS = 0.005;

class JitterBufferProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = options.processorOptions || {};
    this.channels = o.channels || 1;
    this.capacity = Math.ceil(sampleRate * (o.capacitySeconds || 12));
    this.target = Math.ceil(sampleRate * (o.targetSeconds || 0.4));
    this.max = Math.ceil(sampleRate * (o.maxSeconds || 4));
    this.ring = Array.from({ length: this.channels }, () => new Float32Array(this.capacity));
    this.written = 0; // samples appended (absolute)
    this.read = 0; // samples played from the ring (absolute)
    this.playing = false;
    this.gain = 0; // current fade gain
    this.fadeStep = 1 / Math.max(1, Math.round(sampleRate * FADE_SECONDS));
    // audible: samples above -80 dBFS (first channel); apart: samples whose channels differ (stereo)
    this.stats = { played: 0, audible: 0, apart: 0, underruns: 0, skips: 0, peak: 0, channels: this.channels };
    this.quanta = 0;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(msg) {
    if (msg.type === 'audio') this.append(msg.channels);
    else if (msg.type === 'reset') { this.read = this.written; this.playing = false; this.gain = 0; }
  }

  append(planes) {
    const n = planes[0].length;
    for (let c = 0; c < this.channels; c++) {
      const src = planes[Math.min(c, planes.length - 1)];
      const ring = this.ring[c];
      let at = this.written % this.capacity;
      const first = Math.min(n, this.capacity - at);
      ring.set(src.subarray(0, first), at);
      if (first < n) ring.set(src.subarray(first), 0);
    }
    this.written += n;
    if (this.written - this.read > this.capacity) this.read = this.written - this.capacity;
  }

  process(inputs, outputs) {
    const out = outputs[0];
    const n = out[0].length;
    let available = this.written - this.read;
    if (available > this.max) { // far behind live: skip ahead
      this.read = this.written - this.target;
      available = this.target;
      this.stats.skips++;
    }
    if (!this.playing && available >= this.target) this.playing = true;
    let peak = 0;
    let audible = 0;
    let apart = 0;
    const take = this.playing ? Math.min(n, available) : 0;
    const fadeOut = this.playing && available < n; // the ring runs dry inside this block
    for (let i = 0; i < n; i++) {
      if (i < take) {
        const remaining = take - i;
        if (fadeOut) this.gain = Math.min(this.gain, remaining * this.fadeStep);
        else this.gain = Math.min(1, this.gain + this.fadeStep);
      }
      const pos = (this.read + i) % this.capacity;
      for (let c = 0; c < out.length; c++) {
        const v = i < take ? this.ring[Math.min(c, this.channels - 1)][pos] * this.gain : 0;
        out[c][i] = v;
        const a = v < 0 ? -v : v;
        if (a > peak) peak = a;
        if (c === 0 && a > 1e-4) audible++;
        if (c > 0 && Math.abs(v - out[0][i]) > 1e-4) apart++;
      }
    }
    this.read += take;
    if (fadeOut) { this.playing = false; this.gain = 0; this.stats.underruns++; }
    this.stats.played += take;
    this.stats.audible += audible;
    this.stats.apart += apart;
    this.stats.peak = Math.max(this.stats.peak * 0.9, peak);
    if (++this.quanta % 16 === 0) {
      this.port.postMessage({
        type: 'stats', ...this.stats, buffered: (this.written - this.read) / sampleRate,
        target: this.target / sampleRate, playing: this.playing,
      });
    }
    return true;
  }
}

registerProcessor('jitter-buffer', JitterBufferProcessor);
