// Steering from the page: weighted prompts with sliders, morph, sampling, now / next, new piece.
// Commands go over the listener's own WebSocket (see README: control); the token comes from the
// page URL the station printed at start (?token=...). Results and errors are shown, and what is
// pending with when it will be heard.

const $ = (id) => document.getElementById(id);
const MAX_PROMPTS = 4;

export function setupSteering(radio) {
  const token = new URLSearchParams(location.search).get('token');
  $('steer').hidden = !token;
  $('listen-only').hidden = Boolean(token);
  if (!token) return;
  let nextId = 1;
  const pending = new Map();

  function addPromptRow(text = '', weight = 1) {
    const rows = $('prompts');
    if (rows.children.length >= MAX_PROMPTS) return;
    const row = document.createElement('div');
    row.className = 'prompt-row';
    row.innerHTML = '<input type="text" class="prompt-text" maxlength="2000" placeholder="describe the music">'
      + '<input type="range" class="prompt-weight" min="0.1" max="10" step="0.1" title="weight">'
      + '<button type="button" class="small remove" title="remove">×</button>';
    row.querySelector('.prompt-text').value = text;
    row.querySelector('.prompt-weight').value = String(weight);
    row.querySelector('.remove').addEventListener('click', () => { if (rows.children.length > 1) row.remove(); });
    rows.appendChild(row);
  }

  function send(command) {
    if (!radio.ws || radio.ws.readyState !== WebSocket.OPEN) {
      $('steer-message').textContent = 'Not connected to the station.';
      return;
    }
    const id = nextId++;
    pending.set(id, command.type);
    radio.ws.send(JSON.stringify({ ...command, id, token }));
  }

  function apply() {
    const rows = [...$('prompts').children].map((row) => ({
      text: row.querySelector('.prompt-text').value.trim(),
      weight: Number(row.querySelector('.prompt-weight').value),
    })).filter((p) => p.text);
    const when = document.querySelector('input[name=when]:checked').value;
    const morph = Number($('morph').value) || 0;
    if (rows.length === 1) send({ type: 'set_prompt', prompt: rows[0].text, morph_seconds: morph, when });
    else if (rows.length > 1) send({ type: 'set_prompts', prompts: rows, morph_seconds: morph, when });
    const params = {};
    for (const name of ['temperature', 'top_k', 'top_p', 'cfg']) {
      const input = $(name);
      if (input.value !== '' && Number(input.value) !== radio.playingParams?.[name]) params[name] = Number(input.value);
    }
    if (Object.keys(params).length) send({ type: 'set_params', ...params, when });
  }

  $('add-prompt').addEventListener('click', () => addPromptRow());
  $('apply').addEventListener('click', apply);
  $('new-piece').addEventListener('click', () => send({ type: 'new_piece',
    when: document.querySelector('input[name=when]:checked').value }));
  addPromptRow();

  radio.onControl = (msg) => {
    const command = pending.get(msg.id);
    pending.delete(msg.id);
    $('steer-message').textContent = msg.type === 'error'
      ? `Refused: ${msg.error}`
      : `${command || msg.command} accepted (${msg.when === 'now' ? 'cutting in' : 'after the buffer'}).`;
    radio.lastControl = msg;
    if (msg.status) showUpcoming(msg.status);
  };
  radio.onStatus = (status) => {
    const playing = status.control && status.control.playing;
    if (playing) {
      radio.playingParams = { temperature: playing.temperature, top_k: playing.top_k, top_p: playing.top_p, cfg: playing.cfg };
      for (const name of ['temperature', 'top_k', 'top_p', 'cfg']) {
        if (document.activeElement !== $(name) && $(name).value === '') $(name).value = String(playing[name]);
      }
    }
    if (status.control) showUpcoming(status.control);
  };

  function showUpcoming(control) {
    const list = $('upcoming');
    list.replaceChildren(...(control.upcoming || []).map((change) => {
      const item = document.createElement('li');
      const what = change.prompt || (change.new_piece ? 'new piece' : 'new settings');
      item.textContent = `${what} — heard in ${change.heard_in_seconds.toFixed(1)} s`;
      return item;
    }));
  }
}
