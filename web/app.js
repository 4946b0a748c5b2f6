// app.js: the entry point of the page. One index.html serves `/` (the
// stranger page with the "Create a room" card) and `/r/<name>` (a room);
// this module picks the view from the path, starts it with the page's one
// SignallingClient, and defines the read-only test hook `window.earshot`.
//
// Module map:
//   protocol.js    signalling client (WebSocket, hello, proof of work,
//                  reconnect), the room-name and interest rules; no DOM
//   session.js     what both pages share: one request at a time to the
//                  server and its answers (errors by their `re`), retry,
//                  offline and fatal notes, microphone and mute, the M key,
//                  chat view and "Hide my IP" control
//   call.js        one RTCPeerConnection: perfect negotiation, trickle ICE,
//                  microphone, camera, data channel `chat`; no DOM
//   mesh.js        a room's RTCPeerConnections, one per member, roles and
//                  fingerprint authentication; no DOM
//   roomcrypto.js  PBKDF2 verifier and auth key, fingerprint HMAC; no DOM
//   safetywords.js the safety words' maths (fingerprints, commitment, KDF)
//                  and their 2048 words; no DOM
//   wordsexchange.js  the commit-then-reveal exchange of one connection's
//                  safety words over its data channel; no DOM
//   privacy.js     the "Hide my IP address" checkbox
//   safety.js      consent screen, proof-of-work progress, report dialog,
//                  ban notice, the safety-words warning
//   strangers.js   the stranger page (its state machine and DOM)
//   country.js     the stranger's country: flag and name
//   roomcard.js    the "Create a room" card on the home page
//   room.js        the room page: its state machine, joining and leaving,
//                  camera, event log, room link
//   members.js     the others in a room: the mesh, their tiles, reports
//   tile.js        one tile per person in a room, and the list of them
//   lock.js        a room's lock and passphrase
//   media.js, meter.js, chat.js   microphone/camera words, "Tap to hear",
//                  level bars, chat log

import { SignallingClient } from './protocol.js';
import { startStrangers } from './strangers.js';
import { startRoomCard } from './roomcard.js';
import { startRoom } from './room.js';
import { ReportDialog, startConsent, startPowProgress } from './safety.js';

const ROOM_PATH = /^\/r\/([^/]*)\/?$/;

function roomFromPath(pathname) {
  const match = ROOM_PATH.exec(pathname);
  if (!match) return null;
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return match[1]; // malformed escapes: room.js reports the name as invalid
  }
}

const client = new SignallingClient();
const roomName = roomFromPath(window.location.pathname);
let strangers = null;
let room = null;

// Shown before anything else, on every page load (nothing is stored):
// Start and Join stay disabled until it is accepted.
const consent = startConsent();
const safety = { consent, reportDialog: new ReportDialog() };
startPowProgress(client);

if (roomName !== null) {
  const template = document.getElementById('room-template');
  document.getElementById('home-view').replaceWith(template.content.cloneNode(true));
  template.remove();
  document.body.dataset.mode = 'room';
  room = startRoom(client, roomName, safety);
} else {
  document.getElementById('room-template').remove();
  document.body.dataset.mode = 'strangers';
  strangers = startStrangers(client, safety);
  startRoomCard(client);
}

// Read-only hook for automated tests; the only global this page defines.
Object.defineProperty(window, 'earshot', {
  value: Object.freeze({
    /** Strangers: the current RTCPeerConnection, or null. */
    get pc() { return strangers ? strangers.pc : null; },
    /** Strangers: idle | searching | connecting | connected | ended. Rooms: as roomState. */
    get state() { return strangers ? strangers.state : room.roomState; },
    /** Rooms: peer id → RTCPeerConnection, a fresh plain object each time. */
    get peers() { return room ? room.peers : {}; },
    /** Rooms: idle | joining | joined | error. */
    get roomState() { return room ? room.roomState : 'idle'; },
    /** Whether the consent screen has been accepted on this page load. */
    get consented() { return consent.accepted; },
    /** Proof of work of the current connection: null, or {state, progress}. */
    get pow() { return client.pow ? { ...client.pow } : null; },
    /**
     * Whether the latest RTCPeerConnection of this page was made relay only
     * ("hide my IP"); null before the first one.
     */
    get hideIp() { return (strangers || room).hideIp; },
    /**
     * Ask for fresh TURN credentials now (what the refresh timer does at 80%
     * of their lifetime) and apply them to every open peer connection, with
     * an ICE restart. Resolves to the number of peer connections updated, or
     * null when no `ice_servers` came (not connected).
     */
    async refreshIce() {
      const answer = await client.refreshIce();
      return answer ? (strangers || room).iceUpdated : null;
    },
  }),
  enumerable: false,
  configurable: false,
  writable: false,
});

if (typeof WebSocket === 'function') {
  client.connect();
  // A page kept in the back/forward cache would hold its socket open (and
  // count against the server's per-client limits): close it on the way out,
  // and start afresh if the page is ever shown from the cache again.
  addEventListener('pagehide', (event) => {
    if (event.persisted) client.close();
  });
  addEventListener('pageshow', (event) => {
    if (event.persisted) location.reload();
  });
  window.addEventListener('online', () => client.reconnectNow());
}
