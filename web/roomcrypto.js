// roomcrypto.js: the passphrase maths of a locked room (PROTOCOL.md,
// "Locked rooms"), with WebCrypto only.
//
// From a passphrase and the room name it derives two independent 32-byte
// values with PBKDF2-HMAC-SHA-256, 300,000 iterations:
//
//   verifier = PBKDF2(passphrase, "earshot/v1/room-verifier/" + room)
//              sent to the server, base64url without padding (43 chars)
//   auth_key = PBKDF2(passphrase, "earshot/v1/room-auth/" + room)
//              never leaves the page; held as a non-extractable HMAC key
//
// and signs or checks the DTLS fingerprints of an SDP with the auth key:
//
//   auth = base64url(HMAC-SHA-256(auth_key,
//            "earshot/v1/fingerprint\n" + room + "\n" + fingerprints))
//
// where `fingerprints` is the sorted, newline-joined list of the SDP's
// `a=fingerprint:` values (algorithm and hex, as written, lower-cased; every
// occurrence, duplicates included). Nothing here touches the DOM, the network
// or storage, and nothing is logged. The passphrase is encoded as UTF-8 after
// Unicode NFC normalisation and nothing else (no trimming), as the protocol
// says, so the same passphrase typed on different devices gives the same keys.

export const PBKDF2_ITERATIONS = 300000;
const VERIFIER_SALT = 'earshot/v1/room-verifier/';
const AUTH_SALT = 'earshot/v1/room-auth/';
const FINGERPRINT_CONTEXT = 'earshot/v1/fingerprint\n';
const KEY_BITS = 256;

const utf8 = new TextEncoder();

/** True when this page can do the maths (WebCrypto needs a secure page). */
export function cryptoAvailable() {
  return Boolean(globalThis.crypto && globalThis.crypto.subtle);
}

/** base64url without padding. */
export function base64url(bytes) {
  const view = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let bin = '';
  for (const b of view) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** Inverse of base64url(); null for anything that is not unpadded base64url. */
export function base64urlDecode(text) {
  if (typeof text !== 'string' || !/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) return null;
  const b64 = text.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (text.length % 4)) % 4);
  let bin;
  try {
    bin = atob(b64);
  } catch {
    return null;
  }
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i += 1) out[i] = bin.charCodeAt(i);
  return out;
}

async function pbkdf2(material, salt) {
  return crypto.subtle.deriveBits(
    { name: 'PBKDF2', hash: 'SHA-256', salt: utf8.encode(salt), iterations: PBKDF2_ITERATIONS },
    material,
    KEY_BITS,
  );
}

/**
 * Both values for `passphrase` in room `room` (the normalised name).
 * Resolves to `{ verifier, authKey }`: the verifier as base64url text, the
 * auth key as a non-extractable HMAC-SHA-256 CryptoKey. Takes a fraction of
 * a second to a few seconds, by design.
 */
export async function deriveRoomKeys(passphrase, room) {
  const material = await crypto.subtle.importKey('raw', utf8.encode(passphrase.normalize('NFC')), 'PBKDF2', false, ['deriveBits']);
  const [verifierBits, authBits] = await Promise.all([
    pbkdf2(material, VERIFIER_SALT + room),
    pbkdf2(material, AUTH_SALT + room),
  ]);
  const verifier = base64url(verifierBits);
  const authKey = await crypto.subtle.importKey(
    'raw', authBits, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign', 'verify'],
  );
  // The CryptoKey holds its own copy; do not leave the raw bytes around.
  new Uint8Array(verifierBits).fill(0);
  new Uint8Array(authBits).fill(0);
  return { verifier, authKey };
}

/** The SDP's `a=fingerprint:` values, lower-cased and sorted. */
export function sdpFingerprints(sdp) {
  const out = [];
  for (const line of String(sdp).split(/\r?\n/)) {
    if (line.startsWith('a=fingerprint:')) out.push(line.slice('a=fingerprint:'.length).trim().toLowerCase());
  }
  return out.sort();
}

function fingerprintMessage(room, sdp) {
  return utf8.encode(`${FINGERPRINT_CONTEXT}${room}\n${sdpFingerprints(sdp).join('\n')}`);
}

/** The `auth` for a description with this SDP. */
export async function signFingerprints(authKey, room, sdp) {
  const mac = await crypto.subtle.sign('HMAC', authKey, fingerprintMessage(room, sdp));
  return base64url(mac);
}

/** Whether `auth` is right for this SDP (a constant-time check by WebCrypto). */
export async function verifyFingerprints(authKey, room, sdp, auth) {
  const mac = base64urlDecode(auth);
  if (!mac || mac.length !== KEY_BITS / 8) return false;
  try {
    return await crypto.subtle.verify('HMAC', authKey, mac, fingerprintMessage(room, sdp));
  } catch {
    return false;
  }
}
