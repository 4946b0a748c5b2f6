// country.js: the stranger's approximate country (`matched.country`, from
// the server's GeoIP lookup of their address), as the stranger page shows
// it: a flag and the country's name in the page's language. It is the only
// thing the page learns about the other person (DESIGN.md, privacy
// invariant 4). Of the DOM it reads only the page's language; no state but
// the cached name lookup.

/** A country code as the server sends it ('DE'), upper-cased; null if not one. */
export function countryCode(code) {
  return typeof code === 'string' && /^[A-Za-z]{2}$/.test(code) ? code.toUpperCase() : null;
}

/** 'DE' -> the regional-indicator pair that renders as a flag. */
export function flagEmoji(code) {
  return String.fromCodePoint(...[...code].map((c) => 0x1f1e6 + c.charCodeAt(0) - 65));
}

let regionNames;

/** 'DE' -> 'Germany' (in the page's language), or the code itself. */
export function countryName(code) {
  if (regionNames === undefined) {
    try {
      regionNames = new Intl.DisplayNames([document.documentElement.lang || 'en'], { type: 'region', fallback: 'code' });
    } catch {
      regionNames = null; // no Intl.DisplayNames: show the code
    }
  }
  if (!regionNames) return code;
  try {
    const name = regionNames.of(code);
    return name && name !== 'Unknown Region' ? name : code;
  } catch {
    return code;
  }
}
