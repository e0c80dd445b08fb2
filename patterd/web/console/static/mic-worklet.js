// The microphone's audio as the daemon takes it: low-pass filtered, resampled to 8 kHz,
// μ-law encoded, in 20 ms frames (160 bytes) posted to the page with the frame's level.

const OUT_RATE = 8000;
const FRAME = 160;
const TAPS = 48;

function lowpass(rate) {
  // A windowed-sinc low-pass at 3.4 kHz (the telephone band) for the input rate.
  const cutoff = 3400 / rate, taps = new Float32Array(TAPS), mid = (TAPS - 1) / 2;
  let sum = 0;
  for (let i = 0; i < TAPS; i++) {
    const x = i - mid;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    const win = 0.42 - 0.5 * Math.cos(2 * Math.PI * i / (TAPS - 1)) + 0.08 * Math.cos(4 * Math.PI * i / (TAPS - 1));
    taps[i] = sinc * win;
    sum += taps[i];
  }
  for (let i = 0; i < TAPS; i++) taps[i] /= sum;
  return taps;
}

const EXP = new Uint8Array(256);
for (let i = 1; i < 256; i++) { let e = 0; for (let v = i; v > 1; v >>= 1) e++; EXP[i] = e; }

function mulaw(sample) {
  let s = Math.max(-32768, Math.min(32767, Math.round(sample * 32767)));
  const sign = s < 0 ? 0x80 : 0;
  if (sign) s = -s;
  if (s > 32635) s = 32635;
  s += 0x84;
  const exponent = EXP[(s >> 7) & 0xff];
  const mantissa = (s >> (exponent + 3)) & 0x0f;
  return ~(sign | (exponent << 4) | mantissa) & 0xff;
}

class MicEncoder extends AudioWorkletProcessor {
  constructor() {
    super();
    this.taps = lowpass(sampleRate);
    this.history = new Float32Array(TAPS);
    this.pos = 0;
    this.step = sampleRate / OUT_RATE;
    this.phase = 0;
    this.prev = 0;
    this.frame = new Uint8Array(FRAME);
    this.filled = 0;
    this.energy = 0;
  }

  filtered(x) {
    this.history[this.pos] = x;
    this.pos = (this.pos + 1) % TAPS;
    let acc = 0;
    for (let i = 0, j = this.pos; i < TAPS; i++, j = (j + 1) % TAPS) acc += this.taps[i] * this.history[j];
    return acc;
  }

  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (!input) return true;
    for (let n = 0; n < input.length; n++) {
      const y = this.filtered(input[n]);
      // output samples that fall between the previous input sample and this one
      while (this.phase <= 1) {
        const value = this.prev + (y - this.prev) * this.phase;
        this.energy += value * value;
        this.frame[this.filled++] = mulaw(value);
        if (this.filled === FRAME) {
          const level = Math.sqrt(this.energy / FRAME);
          this.port.postMessage({frame: this.frame.buffer, level}, [this.frame.buffer]);
          this.frame = new Uint8Array(FRAME);
          this.filled = 0;
          this.energy = 0;
        }
        this.phase += this.step;
      }
      this.phase -= 1;
      this.prev = y;
    }
    return true;
  }
}

registerProcessor("mic-encoder", MicEncoder);
