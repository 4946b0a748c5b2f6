// roomcard.js: the "Create a room" card on the home page.
//
// Fills the name field with a server suggestion (`room_suggest` →
// `room_suggestion`) unless the person has typed their own, checks the name
// against the rules in PROTOCOL.md "Rooms" before leaving the page, and goes
// to `/r/<name>`. Creating is just opening the link: the room exists once
// someone joins it.

import { normalizeRoomName, roomNameProblem } from './protocol.js';

export function startRoomCard(client) {
  const $ = (id) => document.getElementById(id);
  const form = $('room-form');
  const input = $('room-name');
  const again = $('room-suggest');
  const error = $('room-name-error');
  let typed = false; // the person's own name: a late suggestion must not overwrite it
  let asked = false;

  const showError = (message) => {
    error.textContent = message || '';
    error.hidden = !message;
    if (message) input.setAttribute('aria-invalid', 'true');
    else input.removeAttribute('aria-invalid');
  };

  const ask = () => {
    if (client.roomSuggest()) asked = true;
  };

  const render = () => {
    again.disabled = !client.ready;
  };

  client.addEventListener('welcome', () => {
    if (!typed && !input.value) ask();
    render();
  });
  client.addEventListener('disconnected', render);
  client.addEventListener('room_suggestion', ({ detail }) => {
    if (!asked || typeof detail.name !== 'string') return;
    asked = false;
    const name = normalizeRoomName(detail.name);
    if (typed || roomNameProblem(name)) return;
    input.value = name;
    showError(null);
  });

  again.addEventListener('click', () => {
    typed = false;
    ask();
    input.focus();
  });
  input.addEventListener('input', () => {
    typed = input.value !== '';
    showError(null);
  });
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const name = normalizeRoomName(input.value);
    const problem = roomNameProblem(name);
    if (problem) {
      showError(problem);
      input.focus();
      return;
    }
    showError(null);
    window.location.assign(`/r/${name}`);
  });
  render();
}
